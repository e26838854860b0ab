"""`cyclerctl` with the RC stand-in instrument registered as "rc:NAME" (for subprocess tests)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from rc_channel import rc_factory  # noqa: E402

from cyclerctl.cli import main  # noqa: E402
from cyclerctl.drivers import registry  # noqa: E402

registry.register("rc", rc_factory)
sys.exit(main())
