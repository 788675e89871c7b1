# Python prototype of tae's features readout (issue #23), used to rank feature extractors
# and readouts for unseen tasks quickly (not part of the build or tests). It stands the
# input encoder in for a plain VAE on the unlabelled pool (tae trains it against R's
# decoder: bench/p2/prototype_tae.py readout=features) and scores, on 100 unseen binary
# tasks (the protocol of bench/p2/main.cpp), readouts of its hidden layer against FS:
#   ncm      nearest class mean, cosine      lin      linear head from the class means (tae's)
#   raw_ncm  nearest class mean on pixels    feat_eu  nearest class mean, Euclidean, unnormalised
#   fs       an MLP 784-100-2 from scratch   ens      lin's and fs's probabilities summed
# Options (key=value): ds=mnist|fmnist, seed, epochs (VAE, 20), xh (hidden width, 100),
# lat (latent size, 7), conv=1 (LeNet-like trunk), ne=N (N encoders, features concatenated),
# aw=X (weight of an auxiliary head predicting the experts' union answer from the hidden
# layer), cl=1 (a SimCLR-style contrastive trunk instead of the VAE: random shifts and
# pixel dropout, cle epochs, tau), aw2=X (one more encoder with aux weight X, features
# concatenated), aug=R (shots shifted by up to R pixels for ncm/lin/fs), sel=1 (with aw2:
# also the plain and the auxiliary encoder alone, and a per-task choice between them),
# w2=X (the last encoder's half of the features scaled by X), semi=N (N unlabelled images of
# each task refine the class means by soft k-means: rows sncm and slin; semi_it, semi_t,
# semi_w set its rounds, temperature and per-image weight; semi_grid=1 adds rows s<w> and
# s<w>/<steps> for weights 0.003–0.1 at 2 rounds and temperature 5, the latter with head
# steps on the shots after the refinement).
#   /usr/bin/python3 bench/p2/prototype_features.py ds=fmnist aw=1000
#   /usr/bin/python3 bench/p2/prototype_features.py ds=fmnist aw2=100 sel=1
# pc=K (inductive: the shots' class means pulled toward the K k-means centres of the pool's
# features near them; see below). fx=1: feature centring and power transforms; kc=K: an encoder
# predicting the pool's K pixel clusters; c1=N: the conv trunk's first channels; x5=1: more
# head steps, shifted shots and pixels beside the features (see the README's P2 notes).
# x6=1 (with pc=K): 5-shot ideas on top of the default prior — head steps held near it (sp),
# the head's and FS's probabilities summed (ensw), test-time one-pixel shifts (tta), the conv
# maps beside the features (ml, off with x6ml=0) and fine-tuned encoders (ft, learning rates
# x6lr=a,b); ks=1,5 chooses the shot counts (the README's P2 notes).
# probe=1: each unseen pair's ceiling (a linear head on every training image); x7=1 (with
# pc=K): the pool's images or centres nearest the prior means as pseudo-labelled shots; x8=1
# (with pc=K): LDA and distribution calibration with the pool's covariance. probe=2 / 3: the
# probe on the unnormalised hidden layers / with their log norms; x9=1: heads on them (5 shots).
# pooln=N (ds=fmnist): the encoders' pool is N training images instead of bench_p2's 10,000.
#   /usr/bin/python3 bench/p2/prototype_features.py ds=mnist aw2=1000 semi=1000 semi_grid=1
import copy, gzip, json, math, random, sys, time
import numpy as np
import torch, torch.nn as nn, torch.nn.functional as F
A = dict(a.split('=') for a in sys.argv[1:])
def opt(k, d): return type(d)(A.get(k, d))
torch.set_num_threads(opt('threads', 2))
DS = opt('ds', 'mnist'); EPOCHS = opt('epochs', 20); XH = opt('xh', 100); LAT = opt('lat', 7)
TASKS = opt('tasks', 100); SEED = opt('seed', 0); CONV = opt('conv', 0); NE = opt('ne', 1)
AW = opt('aw', 0.0); CL = opt('cl', 0); AUG = opt('aug', 0)
TAUG = opt('taug', 0)  # taug=R: the encoders train on pool images shifted by up to R pixels
torch.manual_seed(SEED); random.seed(SEED)
MNIST = opt('mnist_dir', '/work/main/data/mnist'); FMNIST = opt('fmnist_dir', '/usr/share/datasets/fashion-mnist')

def idx(path):
    with gzip.open(path) as f: b = f.read()
    if b[3] == 3:
        n = int.from_bytes(b[4:8], 'big')
        return torch.tensor(np.frombuffer(b, np.uint8, offset=16).reshape(n, 784).astype(np.float32) / 255)
    return torch.tensor(np.frombuffer(b, np.uint8, offset=8).astype(np.int64))

# The splits of bench_p2: MNIST-2 (experts on (0,1), (2,3)), F-MNIST-3 ((0,1), (2,3), (4,5)).
if DS == 'mnist':
    xs, ys = [], []
    for d in range(10):
        v = torch.tensor(json.load(open(f'{MNIST}/{d}.json'))['data'], dtype=torch.float32).view(-1, 784)
        xs.append(v); ys.append(torch.full((v.size(0),), d))
    X = torch.cat(xs); Y = torch.cat(ys)
    perm = torch.randperm(X.size(0)); ntr = X.size(0) * 8 // 10
    trx, tr_y, tex, tey = X[perm[:ntr]], Y[perm[:ntr]], X[perm[ntr:]], Y[perm[ntr:]]
    pool = trx; seen = [0, 1, 2, 3]
else:
    X = idx(f'{FMNIST}/train-images-idx3-ubyte.gz'); Y = idx(f'{FMNIST}/train-labels-idx1-ubyte.gz')
    tex = idx(f'{FMNIST}/t10k-images-idx3-ubyte.gz'); tey = idx(f'{FMNIST}/t10k-labels-idx1-ubyte.gz')
    # pooln=N: a pool of N training images (10,000 as bench_p2; the first 20,000 are the tasks')
    PN = opt('pooln', 10000); p = torch.randperm(X.size(0))
    trx, tr_y = X[p[:20000]], Y[p[:20000]]; pool = X[p[:PN]]; seen = [0, 1, 2, 3, 4, 5]
unseen = [c for c in range(10) if c not in seen]
pairs = [(seen[i], seen[i + 1]) for i in range(0, len(seen), 2)]

def mlp(i, o, h=100): return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, o))
def train_clf(x, y, epochs=3):
    m = mlp(784, 2); o = torch.optim.Adam(m.parameters(), 2e-3)
    for _ in range(epochs):
        p = torch.randperm(x.size(0))
        for b in range(0, x.size(0), 64):
            i = p[b:b+64]; l = F.cross_entropy(m(x[i]), y[i]); o.zero_grad(); l.backward(); o.step()
    return m
# The experts' union answer on the pool (the target of aw).
# at=T: each expert's answer softened by temperature T (p^(1/T), renormalised: what a black
# box's probabilities give without its logits) before the union.
AT = opt('at', 1.0)
U = torch.zeros(pool.size(0), 10); BOXES = []
for a, b in pairs:
    i = (tr_y == a) | (tr_y == b); box = train_clf(trx[i], (tr_y[i] == b).long()); BOXES.append(box)
    with torch.no_grad(): pr = F.softmax(box(pool) / AT, 1)
    U[:, a] += pr[:, 0]; U[:, b] += pr[:, 1]
U = U / U.sum(1, keepdim=True)

C1 = opt('c1', 16)  # conv=1: channels of the first convolution (the second has twice as many)
def trunk():
    if not CONV: return nn.Sequential(nn.Linear(784, XH), nn.BatchNorm1d(XH), nn.ReLU())
    return nn.Sequential(nn.Unflatten(1, (1, 28, 28)),
                         nn.Conv2d(1, C1, 5, padding=2), nn.BatchNorm2d(C1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(C1, 2 * C1, 5, padding=2), nn.BatchNorm2d(2 * C1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(2 * C1 * 49, XH), nn.BatchNorm1d(XH), nn.ReLU())

def train_vae(aw=None, target=None):
    aw = AW if aw is None else aw
    T = U if target is None else target
    enc = trunk(); em = nn.Linear(XH, LAT); el = nn.Linear(XH, LAT); aux = nn.Linear(XH, T.size(1))
    dec = nn.Sequential(nn.Linear(LAT, 100), nn.BatchNorm1d(100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 784))
    mods = [enc, em, el, aux, dec]
    o = torch.optim.Adam([p for m in mods for p in m.parameters()], 1e-3)
    for _ in range(EPOCHS):
        p = torch.randperm(pool.size(0))
        for b in range(0, pool.size(0) - 127, 128):
            r = p[b:b+128]; x = pool[r]
            if TAUG: x = views(x, TAUG, 0.0)
            h = enc(x); m, l = em(h), el(h).clamp(-8, 6)
            z = m + (0.5 * l).exp() * torch.randn_like(m)
            rec = F.binary_cross_entropy_with_logits(dec(z), x, reduction='none').sum(1)
            kl = 0.5 * (l.exp() + m * m - 1 - l).sum(1)
            loss = (rec + kl).mean() - aw * (T[r] * F.log_softmax(aux(h), 1)).sum(1).mean()
            o.zero_grad(); loss.backward(); o.step()
    return enc.eval()

def views(x, r=3, drop=None):
    n = x.size(0); im = F.pad(x.view(-1, 1, 28, 28), (r, r, r, r))
    dy = torch.randint(0, 2 * r + 1, (n,)).tolist(); dx = torch.randint(0, 2 * r + 1, (n,)).tolist()
    out = torch.stack([im[i, 0, dy[i]:dy[i]+28, dx[i]:dx[i]+28] for i in range(n)]).reshape(n, 784)
    drop = opt('drop', 0.2) if drop is None else drop
    return out * (torch.rand(n, 784) > drop).float() if drop > 0 else out

def train_contrastive():
    enc = trunk(); proj = nn.Sequential(nn.Linear(XH, XH), nn.ReLU(), nn.Linear(XH, 64))
    o = torch.optim.Adam(list(enc.parameters()) + list(proj.parameters()), 1e-3)
    for _ in range(opt('cle', 15)):
        p = torch.randperm(pool.size(0))
        for b in range(0, pool.size(0) - 255, 256):
            x = pool[p[b:b+256]]; n = x.size(0)
            z = F.normalize(torch.cat([proj(enc(views(x))), proj(enc(views(x)))]), dim=1)
            sim = z @ z.t() / opt('tau', 0.2); sim.fill_diagonal_(-1e9)
            loss = F.cross_entropy(sim, torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]))
            o.zero_grad(); loss.backward(); o.step()
    return enc.eval()

t0 = time.time()
encs = [train_contrastive() if CL else train_vae() for _ in range(NE)]
if opt('aw2', -1.0) >= 0: encs.append(train_vae(opt('aw2', -1.0)))  # one more encoder, aux weight aw2
# kc=K: one more encoder whose auxiliary head predicts the pool's k-means cluster (K centres of
# the centred, normalised pixels; weight kw): pseudo-classes that cover the unseen classes too.
KC = opt('kc', 0)
if KC:
    with torch.no_grad():
        xp = F.normalize(pool - pool.mean(0), dim=1); g = torch.Generator().manual_seed(SEED)
        C = xp[torch.randperm(xp.size(0), generator=g)[:KC]].clone()
        for _ in range(opt('kc_it', 20)):
            asg = (xp @ C.t()).argmax(1)
            C = F.normalize(torch.zeros_like(C).index_add_(0, asg, xp) + 1e-6 * C, dim=1)
        asg = (xp @ C.t()).argmax(1)
    enc_k = train_vae(opt('kw', 100.0), F.one_hot(asg, KC).float())
    if opt('kc_only', 0): encs = [enc_k]
    elif opt('kc_replace', 0): encs[0] = enc_k
    else: encs.append(enc_k)
print(f'{NE} encoder(s) trained in {time.time() - t0:.0f} s', flush=True)
W2 = opt('w2', 1.0)  # the last encoder's half scaled by w2 (with aw2: the auxiliary encoder's weight)
def hidden(x):
    ws = [1.0] * (len(encs) - 1) + [W2]
    with torch.no_grad(): return torch.cat([w * F.normalize(e(x), dim=1) for w, e in zip(ws, encs)], 1) / math.sqrt(len(encs))
def feats(x): return F.normalize(hidden(x), dim=1)
# probe=1: the features' ceiling on each unseen pair — a linear head (probe_steps Adam steps,
# weight decay 1e-4) on every training image of the pair's two classes, scored on the test
# split's — against an MLP 784-100-2 on the same pixels (fs_all); then exit.
if opt('probe', 0):
    PR = opt('probe', 0)  # 2: the encoders' hidden layers unnormalised; 3: normalised + each one's log norm
    def pf(x):
        if PR == 1: return feats(x)
        with torch.no_grad(): hs = [e(x) for e in encs]
        if PR == 2: return torch.cat(hs, 1)
        return torch.cat([feats(x)] + [h.norm(dim=1, keepdim=True).clamp_min(1e-6).log() for h in hs], 1)
    def batched(x): return torch.cat([pf(x[i:i + 4096]) for i in range(0, x.size(0), 4096)])
    rows = []
    for i, a in enumerate(unseen):
        for b in unseen[i + 1:]:
            m = (tr_y == a) | (tr_y == b); t = (tey == a) | (tey == b)
            ytr = (tr_y[m] == b).long(); yte = (tey[t] == b).long()
            ftr, fte = batched(trx[m]), batched(tex[t])
            L = nn.Linear(ftr.size(1), 2); o = torch.optim.Adam(L.parameters(), 1e-2, weight_decay=1e-4)
            for _ in range(opt('probe_steps', 500)):
                l = F.cross_entropy(L(ftr), ytr); o.zero_grad(); l.backward(); o.step()
            with torch.no_grad(): lp = (L(fte).argmax(1) == yte).float().mean().item()
            tr_lp = (L(ftr).argmax(1) == ytr).float().mean().item()
            fsa = train_clf(trx[m], ytr, epochs=5)
            with torch.no_grad(): fa = (fsa(tex[t]).argmax(1) == yte).float().mean().item()
            rows.append((a, b, lp, tr_lp, fa))
            print(f'probe {a}/{b}: linear on features {100 * lp:.1f} (train {100 * tr_lp:.1f}), MLP on pixels {100 * fa:.1f}', flush=True)
    print(f'probe mean: linear on features {100 * np.mean([r[2] for r in rows]):.1f}, MLP on pixels {100 * np.mean([r[4] for r in rows]):.1f}')
    sys.exit(0)
# fx=1: feature transforms before the per-encoder normalisation, as rows <t>_ncm / <t>_lin:
# cen (each encoder's hidden layer minus its mean over the pool, SimpleShot's CL2N), pt<p>
# (h^p, Tukey's power transform), and both.
FX = opt('fx', 0)
if FX:
    with torch.no_grad():
        PMEAN = [torch.cat([e(pool[i:i + 4096]) for i in range(0, pool.size(0), 4096)]).mean(0) for e in encs]
def hidden_fx(x, cen, pw):
    ws = [1.0] * (len(encs) - 1) + [W2]; out = []
    with torch.no_grad():
        for w, e, mu in zip(ws, encs, PMEAN):
            h = e(x)
            if pw != 1.0: h = (h + 1e-6).pow(pw)
            if cen: h = h - (PMEAN_PW[(pw, id(e))] if pw != 1.0 else mu)
            out.append(w * F.normalize(h, dim=1))
    return F.normalize(torch.cat(out, 1), dim=1)
if FX:
    PMEAN_PW = {}
    with torch.no_grad():
        for pw in (0.5,):
            for e in encs:
                PMEAN_PW[(pw, id(e))] = torch.cat([(e(pool[i:i + 4096]) + 1e-6).pow(pw) for i in range(0, pool.size(0), 4096)]).mean(0)
FXS = {'cen': (True, 1.0), 'pt': (False, 0.5), 'cenpt': (True, 0.5)}
def means(f, y): return torch.stack([f[y == 0].mean(0), f[y == 1].mean(0)])
def ncm(fs, sy, ft, temp=10.0): return temp * F.normalize(ft, dim=1) @ F.normalize(means(fs, sy), dim=1).t()
def lin(fs, sy, ft, wd=1e-3, steps=100):
    L = nn.Linear(fs.size(1), 2); c = means(fs, sy)
    with torch.no_grad(): L.weight.copy_(2 * c); L.bias.copy_(-(c * c).sum(1))
    o = torch.optim.Adam(L.parameters(), 1e-2, weight_decay=wd)
    for _ in range(steps):
        l = F.cross_entropy(L(fs), sy); o.zero_grad(); l.backward(); o.step()
    with torch.no_grad(): return L(ft)
def fs_mlp(sx, sy, tx, epochs=60):
    m = mlp(784, 2); o = torch.optim.Adam(m.parameters(), 3e-3)
    for _ in range(epochs):
        p = torch.randperm(sx.size(0))
        for b in range(0, sx.size(0), 16):
            i = p[b:b+16]; l = F.cross_entropy(m(sx[i]), sy[i]); o.zero_grad(); l.backward(); o.step()
    with torch.no_grad(): return m(tx)
def shifted(x, r):
    im = F.pad(x.view(-1, 1, 28, 28), (r, r, r, r))
    return torch.cat([im[:, :, r + dy:r + dy + 28, r + dx:r + dx + 28].reshape(-1, 784)
                      for dy in range(-r, r + 1) for dx in range(-r, r + 1)])

# sel=1 (with aw2): per task, the plain encoder's features (encs[0]) or the auxiliary one's
# (encs[-1]), chosen by how differently the experts answer the two classes' shots (total
# variation between the classes' mean union answers > sel_t) — 'div' — or by leave-one-out
# on the shots (from 2 shots) — 'loo'.
SEL = opt('sel', 0); SEL_T = opt('sel_t', 0.5); CHOSE = []
def union_of(x):
    u = torch.zeros(x.size(0), 10)
    with torch.no_grad():
        for (a, b), box in zip(pairs, BOXES): pr = F.softmax(box(x), 1); u[:, a] += pr[:, 0]; u[:, b] += pr[:, 1]
    return u / u.sum(1, keepdim=True)
def lin_on(e, sx, sy, tx):
    with torch.no_grad(): f = lambda x: F.normalize(e(x), dim=1)
    return lin(f(sx).detach(), sy, f(tx).detach())
def loo(e, sx, sy):
    ok = 0
    for i in range(sx.size(0)):
        keep = torch.arange(sx.size(0)) != i
        ok += int(lin_on(e, sx[keep], sy[keep], sx[i:i + 1]).argmax(1).item() == sy[i].item())
    return ok
def selection(r, sx, sy, tx):
    r['plain'] = lin_on(encs[0], sx, sy, tx); r['aux'] = lin_on(encs[-1], sx, sy, tx)
    u = union_of(sx); div = 0.5 * (u[sy == 0].mean(0) - u[sy == 1].mean(0)).abs().sum().item()
    CHOSE.append(div > SEL_T); r['div'] = r['aux'] if div > SEL_T else r['plain']
    if (sy == 0).sum() >= 2: r['loo'] = r['aux'] if loo(encs[-1], sx, sy) > loo(encs[0], sx, sy) else r['plain']

# semi=N: N unlabelled images of the task's two classes (training split, the shots' classes'
# natural mix) refine the class means by soft k-means (semi_it rounds, temperature semi_t).
SEMI = opt('semi', 0)
def refine(fs, sy, fu, its=opt('semi_it', 10), temp=opt('semi_t', 10.0), uw=opt('semi_w', 1.0)):
    c = F.normalize(means(fs, sy), dim=1)
    for _ in range(its):
        p = F.softmax(temp * F.normalize(fu, dim=1) @ c.t(), 1)
        # uw: the unlabelled images' total weight relative to their number (shots weigh 1 each).
        num = torch.stack([fs[sy == j].sum(0) + uw * (p[:, j:j+1] * fu).sum(0) for j in (0, 1)])
        den = torch.stack([(sy == j).sum() + uw * p[:, j].sum() for j in (0, 1)]).unsqueeze(1)
        c = F.normalize(num / den, dim=1)
    return c
def lin_from(c, fs, sy, ft, wd=1e-3, steps=100, fu=None, pu=None, hw=0.0):
    L = nn.Linear(fs.size(1), 2)
    with torch.no_grad(): L.weight.copy_(2 * c); L.bias.copy_(-(c * c).sum(1))
    o = torch.optim.Adam(L.parameters(), 1e-2, weight_decay=wd)
    for _ in range(steps):
        l = F.cross_entropy(L(fs), sy)
        if hw > 0: l = l - hw * (pu * F.log_softmax(L(fu), 1)).sum(1).mean()
        o.zero_grad(); l.backward(); o.step()
    with torch.no_grad(): return L(ft)

# pc=K: the pool's features clustered by k-means (K centres, cosine); each shot class mean
# is pulled toward the centres near it: c' = normalize(c + lam · Σ_j softmax_j(t · c·μ_j) μ_j),
# rows pc<lam>/<t> (inductive: the pool is the coordinator's, no image of the task is used).
PC = opt('pc', 0)
if PC:
    with torch.no_grad():
        fp = torch.cat([feats(pool[i:i + 4096]) for i in range(0, pool.size(0), 4096)])
        g = torch.Generator().manual_seed(SEED)
        MU = fp[torch.randperm(fp.size(0), generator=g)[:PC]].clone()
        for _ in range(25):
            a_ = (fp @ MU.t()).argmax(1)
            MU = F.normalize(torch.zeros_like(MU).index_add_(0, a_, fp) + 1e-6 * MU, dim=1)
if PC and opt('x8', 0):
    with torch.no_grad():  # the pool's within-cluster covariance (x8)
        a_ = (fp @ MU.t()).argmax(1)
        cm = torch.zeros_like(MU).index_add_(0, a_, fp) / torch.bincount(a_, minlength=PC).clamp(min=1).unsqueeze(1).float()
        d_ = fp - cm[a_]; SW = d_.t() @ d_ / fp.size(0)
def pull(c, lam, t):
    w = F.softmax(t * F.normalize(c, dim=1) @ MU.t(), 1)
    return F.normalize(F.normalize(c, dim=1) + lam * w @ MU, dim=1)
def prior_means(fs, sy, k, lam=2.0, t=30.0):
    # The pull as a prior worth lam shots (k shots weigh k): tae's default is lam 2, t 30.
    cn = F.normalize(means(fs, sy), dim=1); wgt = F.softmax(t * cn @ MU.t(), 1)
    return F.normalize(k * cn + lam * wgt @ MU, dim=1)
rng = random.Random(SEED + 1234)
for k in [int(v) for v in opt('ks', '1,5').split(',')]:
    accs = {}; PAIR = []
    for t in range(TASKS):
        a, b = rng.sample(unseen, 2); PAIR.append(tuple(sorted((a, b))))
        ia = (tr_y == a).nonzero().flatten(); ib = (tr_y == b).nonzero().flatten()
        rows = [ia[rng.randrange(len(ia))].item() for _ in range(k)] + [ib[rng.randrange(len(ib))].item() for _ in range(k)]
        sx = trx[rows]; sy = torch.tensor([0] * k + [1] * k)
        ta = (tey == a).nonzero().flatten()[:500]; tb = (tey == b).nonzero().flatten()[:500]
        tx = tex[torch.cat([ta, tb])]; ty = torch.cat([torch.zeros(len(ta)), torch.ones(len(tb))]).long()
        if AUG: sx = shifted(sx, AUG); sy = sy.repeat((2 * AUG + 1) ** 2)
        fs_, ft_ = feats(sx), feats(tx)
        raw = lambda x: F.normalize(x - pool.mean(0), dim=1)
        r = {'ncm': ncm(fs_, sy, ft_), 'lin': lin(fs_, sy, ft_), 'raw_ncm': ncm(raw(sx), sy, raw(tx)),
             'feat_eu': -torch.cdist(hidden(tx), means(hidden(sx), sy)), 'fs': fs_mlp(sx, sy, tx, 60 if not AUG else 10)}
        r['ens'] = F.softmax(r['lin'], 1) + F.softmax(r['fs'], 1)
        if SEL: selection(r, sx, sy, tx)
        if FX:
            for nm, (cen, pw) in FXS.items():
                a_s, a_t = hidden_fx(sx, cen, pw), hidden_fx(tx, cen, pw)
                r[nm + '_ncm'] = ncm(a_s, sy, a_t); r[nm + '_lin'] = lin(a_s, sy, a_t)
        if PC:
            c0 = means(fs_, sy)
            for lam in (0.3, 1.0, 3.0):
                for t_ in (10.0, 30.0):
                    r[f'pc{lam:g}/{t_:g}'] = F.normalize(ft_, dim=1) @ pull(c0, lam, t_).t()
            # pcd: the pull as a prior worth lam shots (k shots weigh k), then the nearest
            # class mean on 1 shot and lin's head steps from it on more.
            for lam in (0.5, 1.0, 2.0):
                for t_ in (10.0, 30.0):
                    c2 = prior_means(fs_, sy, k, lam, t_)
                    r[f'pcd{lam:g}/{t_:g}'] = (F.normalize(ft_, dim=1) @ c2.t() if k == 1
                                               else lin_from(c2, fs_, sy, ft_))
        if opt('x9', 0):
            # x9=1: the encoders' hidden layers unnormalised (the probe's 2: they hold more of
            # sneaker / ankle boot than the normalised features), scaled by the pool's mean norm
            # (rawlin) or standardised per unit over the pool (zlin), alone or beside the features.
            if 'RAW_S' not in globals():
                with torch.no_grad():
                    hp = torch.cat([torch.cat([e(pool[i:i + 4096]) for e in encs], 1) for i in range(0, pool.size(0), 4096)])
                RAW_S = hp.norm(dim=1).mean(); RAW_MU = hp.mean(0); RAW_SD = hp.std(0).clamp_min(1e-3)
            def rawh(x):
                with torch.no_grad(): return torch.cat([e(x) for e in encs], 1)
            hs_, ht_ = rawh(sx), rawh(tx)
            rs, rt = hs_ / RAW_S, ht_ / RAW_S
            zs, zt = (hs_ - RAW_MU) / RAW_SD / math.sqrt(hs_.size(1)), (ht_ - RAW_MU) / RAW_SD / math.sqrt(hs_.size(1))
            r['rawlin'] = lin(rs, sy, rt); r['zlin'] = lin(zs, sy, zt); r['zncm'] = ncm(zs, sy, zt)
            for a9 in (0.5, 1.0):
                r[f'catraw{a9:g}'] = lin(torch.cat([fs_, a9 * rs], 1), sy, torch.cat([ft_, a9 * rt], 1))
                r[f'catz{a9:g}'] = lin(torch.cat([fs_, a9 * zs], 1), sy, torch.cat([ft_, a9 * zt], 1))
        if opt('x5', 0):
            # x5=1: heads for 5 shots — more steps (300), shots shifted by ±1 pixel as extra shots
            # (aug1), and the features side by side with the centred, normalised pixels scaled by
            # a (catpix<a>), each from the class means by 100 steps.
            r['lin300'] = lin(fs_, sy, ft_, steps=300)
            sxa = shifted(sx, 1); sya = sy.repeat(9)
            r['aug1'] = lin(feats(sxa), sya, ft_)
            pm = pool.mean(0)
            for a_ in (0.3, 0.5, 1.0):
                cp = lambda x: F.normalize(torch.cat([feats(x), a_ * F.normalize(x - pm, dim=1)], 1), dim=1)
                r[f'catpix{a_:g}'] = lin(cp(sx), sy, cp(tx))
        if opt('x6', 0):
            # x6=1: 5-shot ideas on top of the default prior (pcd2/30): head steps held near
            # the prior (sp<mu>), the head's and FS's probabilities summed (ensw<w>), features
            # averaged over the 9 one-pixel shifts (tta), the conv maps beside the features
            # (ml<a>), and the encoders fine-tuned on the shots near their weights (ft<lr>).
            assert PC, 'x6=1 needs pc=K'
            c2 = prior_means(fs_, sy, k)
            base = F.normalize(ft_, dim=1) @ c2.t() if k == 1 else lin_from(c2, fs_, sy, ft_)
            r['p230'] = base
            def lin_sp(c, fs, ft, mu, steps=100):
                W = (2 * c).clone().requires_grad_(True); B = (-(c * c).sum(1)).clone().requires_grad_(True)
                W0, B0 = W.detach().clone(), B.detach().clone()
                o = torch.optim.Adam([W, B], 1e-2)
                for _ in range(steps):
                    l = F.cross_entropy(fs @ W.t() + B, sy) + mu * ((W - W0).pow(2).sum() + (B - B0).pow(2).sum())
                    o.zero_grad(); l.backward(); o.step()
                with torch.no_grad(): return ft @ W.t() + B
            if k > 1:
                for mu in (0.003, 0.03, 0.3): r[f'sp{mu:g}'] = lin_sp(c2, fs_, ft_, mu)
            for w in (0.3, 1.0):
                r[f'ensw{w:g}'] = F.softmax(base, 1) + w * F.softmax(r['fs'], 1)
            def tta(x):
                n = x.size(0)
                return F.normalize(feats(shifted(x, 1)).view(9, n, -1).mean(0), dim=1)
            fs_t, ft_t = tta(sx), tta(tx)
            c3 = prior_means(fs_t, sy, k)
            r['tta'] = ft_t @ c3.t() if k == 1 else lin_from(c3, fs_t, sy, ft_t)
            def convmaps(x):
                with torch.no_grad(): return torch.cat([F.normalize(e[:10](x), dim=1) for e in encs], 1) / math.sqrt(len(encs))
            for a_ in ((0.5, 1.0) if opt('x6ml', 1) else ()):
                ml = lambda x: F.normalize(torch.cat([feats(x), a_ * F.normalize(convmaps(x), dim=1)], 1), dim=1)
                r[f'ml{a_:g}'] = lin(ml(sx), sy, ml(tx))
            if k > 1:
                for lr in [float(v) for v in opt('x6lr', '1e-4,1e-3').split(',') if v]:
                    es = [copy.deepcopy(e).eval() for e in encs]
                    ps = [p for e in es for p in e.parameters()]; p0 = [p.detach().clone() for p in ps]
                    W = (2 * c2).clone().requires_grad_(True); B = (-(c2 * c2).sum(1)).clone().requires_grad_(True)
                    o = torch.optim.Adam([{'params': ps, 'lr': lr}, {'params': [W, B], 'lr': 1e-2}])
                    fe = lambda x: F.normalize(torch.cat([F.normalize(e(x), dim=1) for e in es], 1), dim=1)
                    for _ in range(50):
                        l = F.cross_entropy(fe(sx) @ W.t() + B, sy) + 1e-3 * (W.pow(2).sum() + B.pow(2).sum()) \
                            + 0.01 * sum((p - q).pow(2).sum() for p, q in zip(ps, p0))
                        o.zero_grad(); l.backward(); o.step()
                    with torch.no_grad(): r[f'ft{lr:g}'] = fe(tx) @ W.t() + B
        if opt('x7', 0):
            # x7=1 (with pc=K): the pool as pseudo-labelled shots — the M pool images (pp) or
            # pool centres (ppc) nearest each prior class mean, and on its side of the other
            # (margin > 0), join the shots with weight w; pps: 2 rounds of self-training, the
            # head's own confident pool picks.
            assert PC, 'x7=1 needs pc=K'
            c2 = prior_means(fs_, sy, k)
            base = F.normalize(ft_, dim=1) @ c2.t() if k == 1 else lin_from(c2, fs_, sy, ft_)
            r['p230'] = base
            def picks(src, score, m):
                sel, lab = [], []
                for j in (0, 1):
                    marg = score[:, j] - score[:, 1 - j]
                    top = torch.where(marg > 0, score[:, j], torch.full_like(marg, -1e9)).topk(m).indices
                    top = top[marg[top] > 0]; sel.append(src[top]); lab += [j] * len(top)
                return torch.cat(sel), torch.tensor(lab)
            for m in (20, 100):
                for w in (0.3, 1.0):
                    fu, lu = picks(fp, fp @ c2.t(), m)
                    pu = F.one_hot(lu, 2).float()
                    r[f'pp{m}/{w:g}'] = lin_from(c2, fs_, sy, ft_, fu=fu, pu=pu, hw=w)
            for m in (5, 20):
                fu, lu = picks(MU, MU @ c2.t(), m)
                r[f'ppc{m}'] = lin_from(c2, fs_, sy, ft_, fu=fu, pu=F.one_hot(lu, 2).float(), hw=0.3)
            # self-training on the pool: the head scores the pool, its top picks join.
            W_ = None; c_ = c2
            for rd in range(2):
                L = nn.Linear(fs_.size(1), 2)
                with torch.no_grad(): L.weight.copy_(2 * c_); L.bias.copy_(-(c_ * c_).sum(1))
                o = torch.optim.Adam(L.parameters(), 1e-2, weight_decay=1e-3)
                if rd: fu, lu = picks(fp, sc, 100)
                for _ in range(100):
                    l = F.cross_entropy(L(fs_), sy)
                    if rd: l = l + 0.3 * F.cross_entropy(L(fu), lu)
                    o.zero_grad(); l.backward(); o.step()
                with torch.no_grad(): sc = L(fp)
            with torch.no_grad(): r['pps'] = L(ft_)
        if opt('x8', 0):
            # x8=1 (with pc=K): the pool's covariance shapes the decision — LDA on the prior means
            # with the pool's within-cluster covariance (ldaG<s>, shrunk by s toward its mean
            # variance), or that of the pool's m=200 features nearest each prior class mean
            # (ldaL<s>), and distribution calibration (dc<s>: 100 features per class drawn from
            # N(prior mean, local covariance) join the shots, weight 0.3, in lin's head steps).
            assert PC, 'x8=1 needs pc=K'
            c2 = prior_means(fs_, sy, k)
            r['p230'] = F.normalize(ft_, dim=1) @ c2.t() if k == 1 else lin_from(c2, fs_, sy, ft_)
            def shrunk(S, s): return (1 - s) * S + s * S.diagonal().mean() * torch.eye(S.size(0))
            def lda(S, c):
                P = torch.linalg.solve(S, c.t()).t()  # rows: S^-1 c_j
                return ft_ @ P.t() - 0.5 * (P * c).sum(1)
            def local(c, m=opt('x8m', 200)):
                out = []
                for j in (0, 1):
                    nb = fp[(fp @ c[j]).topk(m).indices]; d = nb - nb.mean(0)
                    out.append(d.t() @ d / (m - 1))
                return 0.5 * (out[0] + out[1])
            SL = local(c2)
            for s in (0.1, 0.3, 0.7):
                r[f'ldaG{s:g}'] = lda(shrunk(SW, s), c2)
                r[f'ldaL{s:g}'] = lda(shrunk(SL, s), c2)
                if k > 1:
                    Lc = torch.linalg.cholesky(shrunk(SL, s))
                    g_ = torch.Generator().manual_seed(t)
                    fu = torch.cat([c2[j] + torch.randn(100, c2.size(1), generator=g_) @ Lc.t() for j in (0, 1)])
                    pu = F.one_hot(torch.tensor([0] * 100 + [1] * 100), 2).float()
                    r[f'dc{s:g}'] = lin_from(c2, fs_, sy, ft_, fu=F.normalize(fu, dim=1), pu=pu, hw=0.3)
        if SEMI:
            pool_ab = torch.cat([ia, ib]); pool_ab = pool_ab[torch.randperm(len(pool_ab))[:SEMI]]
            fu = feats(trx[pool_ab]); c = refine(fs_, sy, fu)
            r['sncm'] = 10.0 * F.normalize(ft_, dim=1) @ c.t()
            r['slin'] = lin_from(c, fs_, sy, ft_)
            if opt('x8', 0):
                # with x8=1: LDA with the pool's covariance on tae+U's refined means (2 rounds,
                # temperature 5, weight 0.03: tae's defaults), against their nearest mean (su).
                c3 = refine(fs_, sy, fu, 2, 5.0, 0.03)
                r['su'] = F.normalize(ft_, dim=1) @ c3.t()
                for s in (0.1, 0.3, 0.7):
                    r[f'slda{s:g}'] = lda(shrunk(SW, s), c3)
            if opt('semi_grid', 0):
                for uw in (0.003, 0.01, 0.03, 0.1):
                    c2 = refine(fs_, sy, fu, 2, 5.0, uw)
                    r[f's{uw:g}'] = F.normalize(ft_, dim=1) @ c2.t()
                    for st in (10, 30):
                        r[f's{uw:g}/{st}'] = lin_from(c2, fs_, sy, ft_, steps=st)
        for n_, p in r.items(): accs.setdefault(n_, []).append((p.argmax(1) == ty).float().mean().item())
    if SEL:
        acc = lambda n_: torch.tensor(accs[n_])
        print(f'  oracle (best of plain/aux per task) {100 * torch.maximum(acc("plain"), acc("aux")).mean():.1f};'
              f' aux chosen by div>{SEL_T}: {100 * sum(CHOSE) / len(CHOSE):.0f}% of tasks', flush=True)
        CHOSE.clear()
    if opt('perpair', 0):
        for pr_ in sorted(set(PAIR)):
            ix = [i for i, q in enumerate(PAIR) if q == pr_]
            print(f'  pair {pr_} ({len(ix)} tasks): ' + '  '.join(f'{n} {100 * sum(v[i] for i in ix) / len(ix):.1f}' for n, v in accs.items()), flush=True)
    print(f'{DS} U {k}-shot: ' + '  '.join(f'{n} {100 * sum(v) / len(v):.1f}' for n, v in accs.items()), flush=True)
