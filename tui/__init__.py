"""The Textual dashboard; it talks to the daemon only through runyard.protocol."""
