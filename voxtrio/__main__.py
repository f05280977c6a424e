import sys

from voxtrio._cli import main

sys.exit(main())
