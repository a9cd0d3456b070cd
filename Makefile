# The two commands a newcomer runs: `make demo` (the main job) and `make test`.
PYTHON ?= python3

.PHONY: demo test install data

# The project and its test tools, from pyproject.toml; editable, so bench/ scripts import it.
install:
	$(PYTHON) -m pip install -e ".[test]"

# prepare -> train -> report -> sample, then print the command that exports the run.
# Uses the GPU when there is one.
demo: install
	$(PYTHON) prepare_data.py --tokenizer=char --name=shakespeare_char
	$(PYTHON) train.py config/shakespeare_cpu.py --resume=auto
	$(PYTHON) sample.py --checkpoint=checkpoints/shakespeare_cpu --num_samples=2 --max_new_tokens=300
	@echo "To export this run for Hugging Face transformers: $(PYTHON) export.py --checkpoint=checkpoints/shakespeare_cpu --out=exports/shakespeare_cpu"

# The linter and formatter check, then the tests.
test: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m pytest -q tests
