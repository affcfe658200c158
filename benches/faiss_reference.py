"""The reference for benches/identify.rs: FAISS's exact inner-product index (IndexFlatIP)
on the same vectors, one thread, one query at a time (as the service searches).

usage: faiss_reference.py GALLERY.f32 QUERIES.f32 N DIM QUERIES  → JSON {p50_ms, p99_ms}
"""
import json
import sys
import time

import faiss
import numpy as np

gallery_file, queries_file, n, dim, count = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
faiss.omp_set_num_threads(1)
gallery = np.fromfile(gallery_file, dtype="<f4").reshape(n, dim)
queries = np.fromfile(queries_file, dtype="<f4").reshape(count, dim)
index = faiss.IndexFlatIP(dim)
index.add(gallery)
times = []
for q in queries:
    start = time.perf_counter()
    index.search(q.reshape(1, dim), 5)
    times.append((time.perf_counter() - start) * 1e3)
times.sort()
pick = lambda p: times[round((len(times) - 1) * p)]
print(json.dumps({"p50_ms": pick(0.5), "p99_ms": pick(0.99)}))
