"""Where models run, apart from what they score: :mod:`~rerank.runtimes.onnx` (ONNX Runtime) and
:mod:`~rerank.runtimes.openvino` (OpenVINO) for encoders, and the LLM backends the LLM stages
share: :mod:`~rerank.runtimes.llm_base` (the :class:`LLM` protocol), :mod:`~rerank.runtimes.local_llm`
(Hugging Face and GGUF models in process, :func:`open_llm`) and :mod:`~rerank.runtimes.openai_http`
(OpenAI-compatible servers)."""
