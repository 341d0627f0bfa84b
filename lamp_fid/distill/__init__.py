"""Reader-to-retriever distillation (Izacard & Grave, ICLR 2021) on user profiles.

* :mod:`lamp_fid.distill.scores`: each passage's relevance score from the FiD reader's cross-attention,
  and the ``{question id: {profile item id: score}}`` files they are kept in;
* :mod:`lamp_fid.distill.trainer`: a dense bi-encoder trained towards those scores (KL), saved as an HF
  encoder folder that ``--retriever dense --encoder <folder>`` loads unchanged;
* :mod:`lamp_fid.distill.quality`: retriever quality without relevance labels (nDCG against the reader's
  scores) and recall@k of items known to be useful (generated data).
"""
