"""A tiny "training" script in the Valohai style: parameters in, metadata lines and an output out."""

import argparse
import json
import math
import os
import time

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--learning_rate", type=float, default=0.01)
args = parser.parse_args()

loss = 2.0
for epoch in range(args.epochs):
    for batch in range(0, 101, 25):
        print(f"epoch {epoch} [{batch:3d}%]", end="\r", flush=True)
        time.sleep(0.1)
    loss *= math.exp(-args.learning_rate * 20)
    print()
    print(json.dumps({"epoch": epoch, "loss": round(loss, 4)}))

outputs = os.environ.get("VH_OUTPUTS_DIR", ".")
with open(os.path.join(outputs, "model.json"), "w") as fh:
    json.dump({"loss": loss, "epochs": args.epochs}, fh)
print("saved model.json")
