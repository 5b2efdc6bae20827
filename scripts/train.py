"""Train or fine-tune a HAT-Net classifier; see `--help`."""

import sys

from hatnet_keras.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
