"""Export a HAT-Net model as a SavedModel, ONNX or LiteRT file; see `--help`."""

import sys

from hatnet_keras.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
