"""The engines that compute masked attention: how, never when (:mod:`visattn.ops.dispatch` decides when)."""
