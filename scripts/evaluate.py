"""Top-1 / top-5 accuracy of a HAT-Net classifier; see `--help`."""

import sys

from hatnet_keras.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
