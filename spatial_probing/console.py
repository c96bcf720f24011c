"""Console hygiene for the ``spatial-probing`` commands: progress and results, not library advertising.

Each line names the library message it removes and why; everything else libraries print stays.
"""

from __future__ import annotations

import logging

# Lightning >= 2.6 logs an advert for its hosted logger ("💡 Tip: ... litlogger") through rank_zero_info
# on every Trainer that has no LitLogger, i.e. on every extract and fit: not information about the run.
_ADVERTS = ("💡 Tip:",)
# Lightning logs "Seed set to N" at INFO on every seed_everything; the seed is in the run's config.yaml.
_SEED_LOGGER = "lightning.fabric.utilities.seed"
# rank_zero_info's logger is whichever of these Lightning's modules imported last
_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_ADVERTS)


def quiet_libraries() -> None:
    """Silence the library messages above (idempotent; loggers are configured before Lightning logs)."""
    logging.getLogger(_SEED_LOGGER).setLevel(logging.WARNING)
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropAdverts) for f in logger.filters):
            logger.addFilter(_DropAdverts())
