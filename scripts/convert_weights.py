"""Convert a HAT-Net PyTorch checkpoint into Keras weights; see `--help`."""

import sys

from hatnet_keras.cli.convert_weights import main

if __name__ == "__main__":
    sys.exit(main())
