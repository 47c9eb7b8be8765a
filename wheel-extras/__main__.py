"""``python -m xprim_models`` for the installed package (the wheel maps xprim_models.py to its __init__)."""

import sys

from xprim_models import main

sys.exit(main())
