"""FRAUDAR (Hooi et al., KDD 2016) as published, for the campaign sweep's baseline: greedily peel
the bipartite user-item graph, one node at a time (the one whose removal loses the least edge
weight), and keep the node set of highest density g(S) = f(S) / |S|, where f(S) sums the weights
1 / log(deg(item) + c) of the edges inside S (column weights that camouflage, i.e. edges to popular
items, cannot hide a block behind). Only the first (densest) block is returned.

Why not rgmining-fraudar: it wraps the original Python 2 era code around a file format; this is
the same algorithm (logWeightedAveDegree, no node priors) in ~60 lines over numpy arrays, with a
lazy-deletion heap: O(E log N).

    python bench/fraudar.py   # a planted dense block in a random graph, found
"""

from __future__ import annotations

import heapq

import numpy as np


def fraudar(users: np.ndarray, items: np.ndarray, *, c: float = 5.0) -> tuple[np.ndarray, np.ndarray, float]:
    """The densest block of the user-item graph with edges (users[e], items[e]) (codes >= 0;
    repeated pairs count once).

    Returns (user mask (U,), item mask (I,), density g of the block), U = users.max() + 1 and
    I = items.max() + 1.
    """
    users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
    if users.shape != items.shape or users.ndim != 1 or len(users) == 0:
        raise ValueError(f"users and items must be equal-length non-empty 1-d arrays, got {users.shape}, {items.shape}")
    if users.min() < 0 or items.min() < 0:
        raise ValueError("users and items must be non-negative codes")
    n_u, n_i = int(users.max()) + 1, int(items.max()) + 1
    pairs = np.unique(users * n_i + items)
    eu, ei = pairs // n_i, pairs % n_i
    w = 1.0 / np.log(np.bincount(ei, minlength=n_i)[ei] + c)  # (E,) column weights
    # nodes 0..n_u-1 are users, n_u.. are items; adjacency as CSR over edges
    a, b = eu, ei + n_u
    ends = np.r_[a, b]
    other = np.r_[b, a]
    ew = np.r_[w, w]
    order = np.argsort(ends, kind="stable")
    nbr, nbr_w = other[order].tolist(), ew[order].tolist()
    start = np.searchsorted(ends[order], np.arange(n_u + n_i + 1)).tolist()
    prio = np.bincount(ends, weights=ew, minlength=n_u + n_i).tolist()  # weight each node holds in S
    alive = [True] * (n_u + n_i)
    heap = [(p, v) for v, p in enumerate(prio)]
    heapq.heapify(heap)
    f, n = float(w.sum()), n_u + n_i
    best_g, best_step, removed = f / n, 0, []
    while n > 1:
        p, v = heapq.heappop(heap)
        if not alive[v] or p != prio[v]:
            continue  # a stale entry
        alive[v] = False
        removed.append(v)
        f -= prio[v]
        n -= 1
        for k in range(start[v], start[v + 1]):
            o = nbr[k]
            if alive[o]:
                prio[o] -= nbr_w[k]
                heapq.heappush(heap, (prio[o], o))
        if f / n > best_g:
            best_g, best_step = f / n, len(removed)
    keep = np.ones(n_u + n_i, bool)
    keep[removed[:best_step]] = False
    return keep[:n_u], keep[n_u:], float(best_g)


def main() -> None:
    rng = np.random.default_rng(0)
    u = rng.integers(0, 1000, 20_000)
    i = np.minimum(rng.zipf(1.5, 20_000), 2000) - 1
    bu, bi = np.repeat(np.arange(1000, 1030), 10), np.tile(np.arange(2000, 2010), 30)
    cam = np.minimum(rng.zipf(1.5, 300), 50) - 1  # camouflage: the block's users also rate popular items
    um, im, g = fraudar(np.r_[u, bu, np.arange(1000, 1030).repeat(10)], np.r_[i, bi, cam])
    print(f"block: {um.sum()} users ({um[1000:].sum()} planted of 30), {im.sum()} items "
          f"({im[2000:].sum()} planted of 10), density {g:.2f}")


if __name__ == "__main__":
    main()
