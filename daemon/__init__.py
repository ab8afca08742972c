"""The runyard daemon: state, scheduling, runtimes and the socket server. Never imports Textual."""
