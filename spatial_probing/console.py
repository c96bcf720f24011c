"""Console hygiene for the ``spatial-probing`` commands: progress and results, not library advertising.

Each line names the library message it removes and why; everything else libraries print stays.
"""

from __future__ import annotations

import logging

# Lightning >= 2.6 logs an advert for its hosted logger ("💡 Tip: ... litlogger") through rank_zero_info
# on every Trainer that has no LitLogger, i.e. on every extract and fit: not information about the run.
# Lightning's device inventory ("GPU available: False, used: False", "TPU available: False, ...") says
# nothing on a machine without those devices; with one present ("GPU available: True, used: False") it stays.
# "`Trainer.fit` stopped: `max_epochs=1` reached." closes every probe fit: a probe fit is one epoch by design.
_ADVERTS = ("💡 Tip:", "GPU available: False", "TPU available: False", "HPU available: False",
            "`Trainer.fit` stopped: `max_epochs=1` reached.")
# open_clip warns "No pretrained weights loaded ... initialized randomly" through the root logger; the
# project asks for that only for a random-init control (a requested checkpoint that fails raises instead).
_OPENCLIP_RANDOM = "No pretrained weights loaded for model"
# Lightning logs "Seed set to N" at INFO on every seed_everything; the seed is in the run's config.yaml.
_SEED_LOGGER = "lightning.fabric.utilities.seed"
# rank_zero_info's logger is whichever of these Lightning's modules imported last
_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_ADVERTS)


class _DropRequestedRandomInit(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_OPENCLIP_RANDOM)


def quiet_libraries() -> None:
    """Silence the library messages above (idempotent; loggers are configured before Lightning logs)."""
    logging.getLogger(_SEED_LOGGER).setLevel(logging.WARNING)
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropAdverts) for f in logger.filters):
            logger.addFilter(_DropAdverts())
    root = logging.getLogger()
    if not any(isinstance(f, _DropRequestedRandomInit) for f in root.filters):
        root.addFilter(_DropRequestedRandomInit())
