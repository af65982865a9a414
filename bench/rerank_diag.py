#!/usr/bin/python3
"""Diagnosis for docs/gnn.md: which neighbourhood makes the non-learned
mean baseline work on 64-d topics (200 x 100 items, sigma argv[1]).

Ranks each query's 200 nearest candidates by the distance to a
candidate's mean with: its k exact nearest items, its links after the HNSW
neighbour heuristic (M0 16 / 32), or its k nearest among the candidates.
Prints topic P@10.  Usage: bench/rerank_diag.py 1.3
"""
import numpy as np, sys
rng=np.random.default_rng(1)
D=64; T=200; PER=100; sigma=float(sys.argv[1]) if len(sys.argv)>1 else 1.3
C=rng.standard_normal((T,D)).astype(np.float32)
top=np.repeat(np.arange(T),PER); X=C[top]+sigma*rng.standard_normal((T*PER,D)).astype(np.float32)
N=len(X); sq=(X*X).sum(1)
def knn(Q,k,excl_self=False):
    out=[];dd=[]
    for s in range(0,len(Q),2000):
        q=Q[s:s+2000]; d=(q*q).sum(1)[:,None]+sq[None,:]-2*q@X.T
        if excl_self: d[np.arange(len(q)),np.arange(s,s+len(q))]=np.inf
        i=np.argpartition(d,k,1)[:,:k]; di=np.take_along_axis(d,i,1); o=np.argsort(di,1)
        out.append(np.take_along_axis(i,o,1)); dd.append(np.take_along_axis(di,o,1))
    return np.vstack(out),np.vstack(dd)
K64,_=knn(X,64,True)
def prune(M0):
    L=[]
    for c in range(N):
        kept=[]
        for u in K64[c]:
            duc=((X[u]-X[c])**2).sum()
            if all(((X[u]-X[w])**2).sum()>duc for w in kept): kept.append(u)
            if len(kept)>=M0: break
        L.append(kept)
    return L
qt=rng.integers(0,T,400); Q=C[qt]+sigma*rng.standard_normal((400,D)).astype(np.float32)
cand,cd=knn(Q,200)
def p10(score):  # score: 400x200 higher better
    o=np.argsort(-score,1)[:,:10]; return (top[np.take_along_axis(cand,o,1)]==qt[:,None]).mean()
print("sigma",sigma,"exact P@10",p10(-cd))
for k in (4,8,16,32,64):
    m=np.stack([X[K64[:,:k]].mean(1)*k/(k+1)+X/(k+1)]) [0]
    sc=-((Q[:,None,:]-m[cand])**2).sum(2); print("knn-avg k",k,p10(sc))
for M0 in (16,32):
    L=prune(M0); m=np.stack([(X[c]+X[l].sum(0))/(1+len(l)) for c,l in enumerate(L)])
    sc=-((Q[:,None,:]-m[cand])**2).sum(2); print("hnsw-links avg M0",M0,p10(sc), "mean deg",np.mean([len(l) for l in L]))
    # weighted by edge weights exp(-(d-min)/sd)
# neighbours within candidate set
for k in (8,16):
    sc=np.zeros((400,200))
    for i in range(400):
        V=X[cand[i]]; d=((V[:,None]-V[None])**2).sum(2); nn=np.argsort(d,1)[:,:k+1]; m=V[nn].mean(1)
        sc[i]=-((Q[i]-m)**2).sum(1)
    print("cand-set avg k",k,p10(sc))
