"""Evaluation: FID, FVD and ObjMC (``metrics``) and the VIPSeg protocol (``vipseg``)."""
