"""Deploy a placement: engine exports (SGLang, vllm-ascend, permutation) and checkpoint permutation.

Downstream of everything else: reads placements, never writes back into planning.
"""
