# Python prototype of tae used to iterate on the algorithm quickly (not part of the
# build or tests). Same nets and losses as fusion/src/tae.cpp; MNIST-2 only.
#   /usr/bin/python3 bench/p2/prototype_tae.py union=1 gw=0 epochs=5 tasks=20 relabel=0.01
# relabel=C: prototype relabelling for the new task (ours; in C++ as TaeOptions::relabel):
# votes_j ∝ C·p_α(y|z_j) restricted to the task + Σ_i r_ij [y_i = y], r_ij the shots' responsibilities.
# readout=features (issue #23): adds the input encoder q(w,z|x) (xw=1; xdet=1 leaves the decoder to
# R's ELBO, as in C++) and reads new tasks over the encoders' hidden layers: nearest class mean (ncm),
# centred (ncm_c), a linear head from the class means (lin_init, lin_c), against FS (an MLP from scratch):
#   /usr/bin/python3 bench/p2/prototype_tae.py union=1 gw=0 epochs=20 xw=1 xonly=1 readout=features tasks=100
import json, math, sys, time, random
import torch, torch.nn as nn, torch.nn.functional as F
torch.set_num_threads(2)
A = dict(a.split('=') for a in sys.argv[1:])
def opt(k, d): return type(d)(A.get(k, d))
SPACE = opt('space', 'classes'); EPOCHS = opt('epochs', 10); BETA = opt('beta', 0.0)
WD = opt('wd', 2); ZD = opt('zd', 5); M = opt('m', 100); LW = opt('lw', 50.0); GW = opt('gw', 50.0)
TASKS = opt('tasks', 20); UNION = opt('union', 0); FLIP = opt('flip', 0); ADAPT = opt('adapt', 60); SAMPLES = opt('samples', 5)
XW = opt('xw', 0.0); XDET = opt('xdet', 1); READOUT = opt('readout', 'prototypes'); XH = opt('xh', 100); ZETA = opt('zeta', 1.0); RELABEL = opt('relabel', 0.0); RB = opt('rb', 0.0); SEED = opt('seed', 0); ALR = opt('alr', 0.05); HARD = opt('hard', 1)
torch.manual_seed(SEED); random.seed(SEED)
xs, ys = [], []
for d in range(10):
    v = torch.tensor(json.load(open(f'/work/main/data/mnist/{d}.json'))['data'], dtype=torch.float32)
    x = v.view(-1, 784); xs.append(x); ys.append(torch.full((x.size(0),), d))
X = torch.cat(xs); Y = torch.cat(ys)
perm = torch.randperm(X.size(0)); ntr = X.size(0) * 8 // 10
trx, tr_y, tex, tey = X[perm[:ntr]], Y[perm[:ntr]], X[perm[ntr:]], Y[perm[ntr:]]
pool = trx
pairs = [(0, 1), (2, 3)]
def mlp(i, o, h=100): return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, o))
def train_clf(x, y, c, epochs=3):
    m = mlp(784, c); o = torch.optim.Adam(m.parameters(), 2e-3)
    for _ in range(epochs):
        p = torch.randperm(x.size(0))
        for b in range(0, x.size(0), 64):
            i = p[b:b+64]; l = F.cross_entropy(m(x[i]), y[i]); o.zero_grad(); l.backward(); o.step()
    return m
boxes = []
for a, b in pairs:
    i = (tr_y == a) | (tr_y == b)
    boxes.append(train_clf(trx[i], (tr_y[i] == b).long(), 2))
with torch.no_grad():
    ans = [F.softmax(bx(pool), 1) for bx in boxes]
    ans_te = [F.softmax(bx(tex), 1) for bx in boxes]
binary = SPACE == 'binary'
C = 2 if binary else 10; T = 20 if binary else 10
def task_of(a, b):
    t = torch.zeros(T); t[a] = 1; t[10 + b if binary else b] = 1; return t
def lift(p, a, b):
    o = torch.zeros(p.size(0), 10); o[:, a] = p[:, 0]; o[:, b] = p[:, 1]; return o
tasks, etas = [], []
for (a, b), p in zip(pairs, ans):
    tasks.append(task_of(a, b)); etas.append(p if binary else lift(p, a, b))
    if FLIP:
        tasks.append(task_of(b, a)); etas.append(p.flip(1) if binary else lift(p, a, b))

if UNION and not binary:
    u = sum(etas); u = u / u.sum(1, keepdim=True)
    t = torch.zeros(T); 
    for a, b in pairs: t[a] = 1; t[b] = 1
    tasks.append(t); etas.append(u)
def trunk(i, h=100): return nn.Sequential(nn.Linear(i, h), nn.BatchNorm1d(h), nn.ReLU())
def mlp2(i, o, bn, h=100):
    L = [nn.Linear(i, h)] + ([nn.BatchNorm1d(h)] if bn else []) + [nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, o)]
    return nn.Sequential(*L)
class Net(nn.Module):
    def __init__(s):
        super().__init__()
        s.dx = mlp2(WD + ZD, 784, True); s.dy = mlp2(ZD, C, False); s.adv = mlp2(WD, C, False)
        s.pt = trunk(T); s.pm = nn.Linear(100, WD); s.pl = nn.Linear(100, WD)
        s.zt = trunk(784 + C); s.zm = nn.Linear(100, ZD); s.zl = nn.Linear(100, ZD)
        s.wt = trunk(784 + T); s.wm = nn.Linear(100, WD); s.wl = nn.Linear(100, WD)
        s.xt = trunk(784, XH); s.xm = nn.Linear(XH, WD + ZD); s.xl = nn.Linear(XH, WD + ZD)
    def ex(s, x): h = s.xt(x); return s.xm(h), s.xl(h).clamp(-8, 6)
    def prior(s, t): h = s.pt(t); return s.pm(h), s.pl(h).clamp(-8, 6)
    def ez(s, x, e): h = s.zt(torch.cat([x, e], 1)); return s.zm(h), s.zl(h).clamp(-8, 6)
    def ew(s, x, t): h = s.wt(torch.cat([x, t], 1)); return s.wm(h), s.wl(h).clamp(-8, 6)
net = Net(); protos = torch.randn(M, ZD)
def kl(m1, l1, m2, l2): return 0.5 * (l2 - l1 + (l1.exp() + (m1 - m2) ** 2) / l2.exp() - 1).sum(-1)
def smp(m, l): return m + (0.5 * l).exp() * torch.randn_like(m)
beta = BETA if BETA > 0 else 1 / 28
def log_resp(x, w, b=None):
    lg = net.dx(torch.cat([w.view(1, -1).expand(M, -1), protos], 1))
    lpx = x @ F.logsigmoid(lg).t() + (1 - x) @ F.logsigmoid(-lg).t()
    return F.log_softmax((b or beta) * lpx, 1)
VOTES = None
def log_g(x, w, classes=None):
    tr = net.training; net.eval()
    lg = net.dx(torch.cat([w.view(1, -1).expand(M, -1), protos], 1))
    lpx = x @ F.logsigmoid(lg).t() + (1 - x) @ F.logsigmoid(-lg).t()
    lpy = F.log_softmax(net.dy(protos), 1)
    if VOTES is not None and classes is not None:
        j = torch.logsumexp(beta * lpx.unsqueeze(2) + VOTES.log().unsqueeze(0), 1)
        if tr: net.train()
        return F.log_softmax(j, 1)
    j = torch.logsumexp(beta * lpx.unsqueeze(2) + lpy.unsqueeze(0), 1)
    if tr: net.train()
    if classes is not None: j = j[:, classes]
    return F.log_softmax(j, 1)
adv_params = list(net.adv.parameters()); ids = {id(p) for p in adv_params}
main_params = [p for p in net.parameters() if id(p) not in ids]
om = torch.optim.Adam(main_params, 1e-3); oa = torch.optim.Adam(adv_params, 1e-3)
K = len(tasks); n = pool.size(0)
RX = pool.repeat(K, 1); RE = torch.cat(etas); RT = torch.stack(tasks).repeat_interleave(n, 0)
taus = torch.stack(tasks)
t0 = time.time(); step = 0
for ep in range(EPOCHS):
    net.train(); p = torch.randperm(RX.size(0)); tot = 0; nb = 0
    for b in range(0, RX.size(0) - 127, 128):
        i = p[b:b+128]; bx, be, bt = RX[i], RE[i], RT[i]
        mz, lz = net.ez(bx, be); mw, lw = net.ew(bx, bt); z = smp(mz, lz); w = smp(mw, lw)
        rec = -F.binary_cross_entropy_with_logits(net.dx(torch.cat([w, z], 1)), bx, reduction='none').sum(1)
        pred = (be * F.log_softmax(net.dy(z), 1)).sum(1)
        mp, lp = net.prior(bt)
        elbo = rec + LW * pred - kl(mz, lz, torch.zeros_like(mz), torch.zeros_like(lz)) - kl(mw, lw, mp, lp)
        mi = (be * F.log_softmax(net.adv(w), 1)).sum(1)
        loss = -elbo.mean() + ZETA * mi.mean()
        if XW > 0:
            xm_, xl_ = net.ex(bx); h = smp(xm_, xl_)
            if XDET:
                for p_ in net.dx.parameters(): p_.requires_grad_(False)
            rec2 = -F.binary_cross_entropy_with_logits(net.dx(h), bx, reduction='none').sum(1)
            if XDET:
                for p_ in net.dx.parameters(): p_.requires_grad_(True)
            loss = loss + XW * (-(rec2 - kl(xm_, xl_, torch.zeros_like(xm_), torch.zeros_like(xl_)))).mean()
        if GW > 0:
            e = step % K; r = torch.randint(n, (128,))
            net.eval(); pm, pl = net.prior(taus[e:e+1]); net.train()
            ws = smp(pm[0], pl[0]); g = log_g(pool[r], ws).exp()
            loss = loss + GW * (1 - (etas[e][r] * g).sum(1)).mean()
        om.zero_grad(); loss.backward(); om.step()
        al = -(be * F.log_softmax(net.adv(w.detach()), 1)).sum(1).mean(); oa.zero_grad(); al.backward(); oa.step()
        tot += -elbo.mean().item(); nb += 1; step += 1
    print(f'epoch {ep+1} -elbo {tot/nb:.1f} {time.time()-t0:.0f}s', flush=True)
net.eval()
if READOUT == 'features':
    net.eval()
    seen = [c for p in pairs for c in p]; unseen = [c for c in range(10) if c not in seen]
    rng = random.Random(SEED + 1234)
    NT = TASKS; WONLY = opt('wonly', 0); XONLY = opt('xonly', 0)
    with torch.no_grad():
        MX = net.xt(pool).mean(0)
        TAU0 = torch.zeros(T)
    def feats(x, tau, centre=False):
        with torch.no_grad():
            hx = net.xt(x); hw = net.wt(torch.cat([x, tau.view(1, -1).expand(x.size(0), -1)], 1))
            if centre:
                hx = hx - MX
                hw = hw - net.wt(torch.cat([pool, tau.view(1, -1).expand(pool.size(0), -1)], 1)).mean(0)
            if XONLY: return F.normalize(hx, dim=1)
            return F.normalize(hw, dim=1) if WONLY else torch.cat([F.normalize(hx, dim=1), F.normalize(hw, dim=1)], 1)
    def ncm_logits(fs, sy, ft, temp=10.0):
        c = torch.stack([fs[sy == 0].mean(0), fs[sy == 1].mean(0)])
        return temp * F.normalize(ft, dim=1) @ F.normalize(c, dim=1).t()
    def linhead(fs, sy, ft, wd=1e-3, steps=100, init=None):
        lin = nn.Linear(fs.size(1), 2)
        if init is not None:
            c = torch.stack([fs[sy == 0].mean(0), fs[sy == 1].mean(0)])
            with torch.no_grad(): lin.weight.copy_(2 * c); lin.bias.copy_(-(c * c).sum(1))
        o = torch.optim.Adam(lin.parameters(), 1e-2, weight_decay=wd)
        for _ in range(steps):
            l = F.cross_entropy(lin(fs), sy); o.zero_grad(); l.backward(); o.step()
        with torch.no_grad(): return lin(ft)
    def fs_mlp(sx, sy, tx, trunk_from=None, epochs=60):
        if trunk_from is None: m = nn.Sequential(nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 2))
        else: m = nn.Sequential(copy.deepcopy(trunk_from), nn.Linear(100, 2))
        m.train()
        if trunk_from is not None: m[0].eval()  # keep BN stats
        o = torch.optim.Adam(m.parameters(), 3e-3)
        for _ in range(epochs):
            p = torch.randperm(sx.size(0))
            for b in range(0, sx.size(0), 16):
                i = p[b:b+16]; l = F.cross_entropy(m(sx[i]), sy[i]); o.zero_grad(); l.backward(); o.step()
        m.eval()
        with torch.no_grad(): return m(tx)
    for kind, pl_ in (('S', seen), ('U', unseen)):
        for k in (1, 5):
            accs = {}
            for t in range(NT):
                a, b = rng.sample(pl_, 2)
                ia = (tr_y == a).nonzero().flatten(); ib = (tr_y == b).nonzero().flatten()
                rows = [ia[rng.randrange(len(ia))].item() for _ in range(k)] + [ib[rng.randrange(len(ib))].item() for _ in range(k)]
                sx = trx[rows]; sy = torch.tensor([0] * k + [1] * k)
                i = (tey == a) | (tey == b); tx = tex[i]; ty = (tey[i] == b).long()
                tau = task_of(a, b)
                fs, ft = feats(sx, tau), feats(tx, tau)
                res = {}
                res['ncm'] = ncm_logits(fs, sy, ft)
                fc, ftc = feats(sx, tau, True), feats(tx, tau, True)
                res['ncm_c'] = ncm_logits(fc, sy, ftc)
                res['lin_c'] = linhead(fc, sy, ftc, init=True)
                res['lin_init'] = linhead(fs, sy, ft, init=True)
                res['fs'] = fs_mlp(sx, sy, tx)
                res['ens'] = F.softmax(res['ncm'], 1) + F.softmax(res['fs'], 1)
                for n_, p in res.items():
                    accs.setdefault(n_, []).append((p.argmax(1) == ty).float().mean().item())
            print(f'{kind} {k}-shot: ' + '  '.join(f'{n} {100*sum(v)/len(v):.1f}' for n, v in accs.items()), flush=True)
    sys.exit(0)
# diagnostic: G on each expert's own task with the prior mean
with torch.no_grad():
    for (a, b), tau, p in zip(pairs, tasks[::(2 if FLIP else 1)], ans_te):
        pm, pl = net.prior(tau.view(1, -1))
        cls = None if binary else [a, b]
        i = (tey == a) | (tey == b)
        g = log_g(tex[i], pm[0], cls).argmax(1)
        agree = (g == p[i].argmax(1)).float().mean().item()
        acc = (g == (tey[i] == b).long()).float().mean().item()
        print(f'recompose own task {a},{b}: agrees with box {agree:.3f}, acc {acc:.3f}')
def adapt(tau, sx, sy, cls):
    with torch.no_grad(): pm, pl = net.prior(tau.view(1, -1)); pm, pl = pm[0], pl[0]
    for p in net.parameters(): p.requires_grad_(False)
    m = pm.clone().requires_grad_(); l = pl.clone().requires_grad_()
    o = torch.optim.Adam([m, l], ALR); d = sx.size(0)
    for _ in range(ADAPT):
        lv = l.clamp(-8, 6); gb = 0
        for s in range(SAMPLES):
            gb = gb + (1 - log_g(sx, smp(m, lv), cls).exp().gather(1, sy.view(-1, 1))).mean()
        gb = gb / SAMPLES
        bound = gb + torch.sqrt((kl(m, lv, pm, pl) + math.log(d / 0.05)) / max(1, 2 * d - 1))
        o.zero_grad(); bound.backward(); o.step()
    for p in net.parameters(): p.requires_grad_(True)
    return m.detach(), l.detach().clamp(-8, 6)
def predict(x, m, l, cls):
    with torch.no_grad():
        v = 0
        for s in range(10):
            lg = log_g(x, smp(m, l), cls)
            v = v + (F.one_hot(lg.argmax(1), 2).float() if HARD else lg.exp())
        return v
seen = [c for p in pairs for c in p]; unseen = [c for c in range(10) if c not in seen]
rng = random.Random(SEED + 1234)
for kind, pl_ in (('S', seen), ('U', unseen)):
    for k in (1, 5):
        accs, prior_accs = [], []
        for t in range(TASKS):
            a, b = rng.sample(pl_, 2)
            ia = (tr_y == a).nonzero().flatten(); ib = (tr_y == b).nonzero().flatten()
            rows = [ia[rng.randrange(len(ia))].item() for _ in range(k)] + [ib[rng.randrange(len(ib))].item() for _ in range(k)]
            sx = trx[rows]; sy = torch.tensor([0] * k + [1] * k)
            i = (tey == a) | (tey == b); tx = tex[i]; ty = (tey[i] == b).long()
            cls = None if binary else [a, b]
            tau = task_of(a, b)
            with torch.no_grad(): pm, plv = net.prior(tau.view(1, -1))
            prior_accs.append((predict(tx, pm[0], plv[0], cls).argmax(1) == ty).float().mean().item())
            m, l = adapt(tau, sx, sy, cls)
            if RELABEL > 0 and cls is not None:
                with torch.no_grad():
                    r = log_resp(sx, m, RB if RB > 0 else None).exp()  # [d, M]
                    cnt = r.t() @ F.one_hot(sy, 2).float()  # [M, 2]
                    pa = F.softmax(net.dy(protos), 1)[:, cls]
                    pa = pa / pa.sum(1, keepdim=True)
                    VOTES = (RELABEL * pa + cnt + 1e-3); VOTES = VOTES / VOTES.sum(1, keepdim=True)
            accs.append((predict(tx, m, l, cls).argmax(1) == ty).float().mean().item())
            VOTES = None
        mu = sum(accs) / len(accs); pmu = sum(prior_accs) / len(prior_accs)
        print(f'{kind} {k}-shot: tae {100*mu:.1f} (prior {100*pmu:.1f})  {time.time()-t0:.0f}s', flush=True)
