"""Console hygiene: library adverts and no-device inventory lines are dropped, real information stays."""

from __future__ import annotations

import logging

import pytest

from spatial_probing.console import quiet_libraries


@pytest.mark.parametrize("logger_name", ["lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"])
def test_no_device_lines_and_adverts_are_dropped_device_lines_stay(caplog, logger_name):
    quiet_libraries()
    quiet_libraries()  # idempotent: one filter per logger
    logger = logging.getLogger(logger_name)
    with caplog.at_level(logging.INFO):
        for msg in ("GPU available: False, used: False", "TPU available: False, using: 0 TPU cores",
                    "💡 Tip: For seamless cloud logging ... litlogger", "`Trainer.fit` stopped: `max_epochs=1` reached.",
                    "GPU available: True (cuda), used: False",
                    "Using bfloat16 Automatic Mixed Precision (AMP)"):
            logger.info(msg)
    assert [r.getMessage() for r in caplog.records] == [
        "GPU available: True (cuda), used: False", "Using bfloat16 Automatic Mixed Precision (AMP)"]
    assert sum(type(f).__name__ == "_DropAdverts" for f in logger.filters) == 1


def test_open_clip_random_init_notice_is_dropped_other_warnings_stay(caplog):
    quiet_libraries()
    with caplog.at_level(logging.WARNING):
        logging.warning("No pretrained weights loaded for model 'ViT-B-32'. Model initialized randomly.")
        logging.warning("Pretrained weights (x.pt) not found for model ViT-B-32.")
    assert [r.getMessage() for r in caplog.records] == ["Pretrained weights (x.pt) not found for model ViT-B-32."]


def test_loading_a_local_model_draws_no_weight_bar_and_restores_bars(capfd, minilm_dir):
    from transformers.utils import logging as hf_logging

    from spatial_probing.encoders.registry import create_encoder

    create_encoder(f"sbert:{minilm_dir}")
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # hub downloads keep their bars
