"""Ranking a user's profile against the query φq(x): bm25, dense, recency, random, none.

``get_rankings(store, retriever, ...)`` ranks every example of a LaMP file once and caches the result
(:mod:`lamp_fid.retrieval.rank`); ``make_retriever(name, task, ...)`` builds one retriever.
"""

from lamp_fid.retrieval.base import RETRIEVERS, Retriever, make_retriever
from lamp_fid.retrieval.rank import Rankings, get_rankings

__all__ = ["RETRIEVERS", "Rankings", "Retriever", "get_rankings", "make_retriever"]
