"""``python -m efficientvit_jax.cli``: the same as the ``efficientvit-jax`` console script."""

import sys

from efficientvit_jax.cli import main

sys.exit(main())
