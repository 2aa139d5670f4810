"""``python -m wsicodec.train`` – same as ``wsicodec train``."""
from wsicodec.cli import main

if __name__ == "__main__":
    main(["train", *__import__("sys").argv[1:]])
