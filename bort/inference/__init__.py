"""Inference: the fast float32 graph, fused CPU kernels, INT8 quantization, latency, prediction.

- :mod:`~bort.inference.fast`: :class:`FastModel`, same weights and outputs, fused oneDNN graph;
- :mod:`~bort.inference.kernels`: fused residual-add + LayerNorm and masked softmax (C++);
- :mod:`~bort.inference.quantize`: INT8 post-training quantization (``python -m
  bort.inference.quantize``); :mod:`~bort.inference.quantized`: the INT8 artefact, loaded and run;
- :mod:`~bort.inference.latency`: latency measurement with the thread settings recorded;
- :mod:`~bort.inference.predict`: the prediction command (``python -m bort.inference.predict``).
"""
