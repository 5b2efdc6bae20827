"""Train a small HAT-Net on generated shapes and classify new images; see `--help`."""

import sys

from hatnet_keras.cli.demo import main

if __name__ == "__main__":
    sys.exit(main())
