"""Console hygiene for the ``spatial-probing`` commands: progress and results, not library advertising.

Each line names the library message it removes and why; everything else libraries print stays.
"""

from __future__ import annotations

import argparse
import logging
import sys

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
#: For every jsonargparse parser of a command (LightningCLI's ``parser_kwargs`` too): a mistake (an unknown key,
#: a wrong type, a missing --config file) raises ``argparse.ArgumentError`` instead of printing the whole usage
#: (60 lines for extract) before its message; ``spatial_probing.cli.main`` prints it as one ``error:`` line.
PARSER_KWARGS = {"exit_on_error": False}


def parser_error(command: str, exc: argparse.ArgumentError) -> int:
    """Print a parser mistake as one ``error:`` line (its message spans lines: "key:\\n  Expected ..."); status 2."""
    print(f"error: {' '.join(str(exc).split())}; see spatial-probing {command} --help", file=sys.stderr)
    return 2


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
