"""The decoding core: types, interfaces, the target, the decoding loop, sampling, replay and reading prompts.

It imports only itself (and the fixed folders trees/, verifiers/, kernels/ and the drafters that need
no training), never Lightning, the training or the evaluation layer (tests/test_layers.py).
"""
