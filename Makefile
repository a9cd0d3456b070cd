# The two commands a newcomer runs: `make demo` (the main job) and `make test`.
PYTHON ?= python3
# The torch installed where the environment has none: the release the test extra's torchao
# pairs with. From PyPI that is the CUDA build on Linux (several GB with its nvidia-* wheels);
# on a machine without a GPU install the CPU one first, and this step keeps it:
#   pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
TORCH ?= torch==2.13.0

.PHONY: demo test install install-test

# torch (unless one is installed), then the project, editable so that bench/ scripts import it.
install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH)"
	$(PYTHON) -m pip install -e .

# As install, with the test extra: pytest, ruff, and the packages the optional tests need.
install-test: install
	$(PYTHON) -m pip install -e ".[test]"

# prepare -> train -> report -> sample, then print the command that exports the run.
# Uses the GPU when there is one.
demo: install
	$(PYTHON) prepare_data.py --tokenizer=char --name=shakespeare_char
	$(PYTHON) train.py config/shakespeare_cpu.py --resume=auto
	$(PYTHON) sample.py --checkpoint=checkpoints/shakespeare_cpu --num_samples=2 --max_new_tokens=300
	@echo "To export this run for Hugging Face transformers: $(PYTHON) export.py --checkpoint=checkpoints/shakespeare_cpu --out=exports/shakespeare_cpu"

# The linter and formatter check, then the tests (CI runs this in a fresh virtual environment).
test: install-test
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m pytest -q tests
