"""Offline evaluation: the leave-one-out full-ranking protocol and HR/NDCG metrics."""
