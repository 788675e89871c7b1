# Seed corpus of chorus.v1 frames (tests/fuzz/corpus/envelope), written with a
# minimal protobuf encoder (field numbers from protocol/chorus/v1/chorus.proto):
#   /usr/bin/python3 tests/fuzz/make_envelope_corpus.py tests/fuzz/corpus/envelope \
#       [tests/fuzz/corpus/dispatch]
# The second directory gets streams for the dispatch target: whole ModelPushes
# (one and several chunks, their SHA-256 right), pushes out of order, Hellos
# that fit and do not fit Fashion-MNIST, and predictions that spend a budget.
import hashlib, struct, sys, os
def varint(n):
    n &= (1 << 64) - 1
    out = b''
    while True:
        b = n & 0x7f; n >>= 7
        if n: out += bytes([b | 0x80])
        else: return out + bytes([b])
def key(f, wt): return varint((f << 3) | wt)
def u(f, n): return key(f, 0) + varint(n)
def s(f, b):
    if isinstance(b, str): b = b.encode()
    return key(f, 2) + varint(len(b)) + b
def d(f, x): return key(f, 1) + struct.pack('<d', x)
def packed(f, ns): return s(f, b''.join(varint(n) for n in ns))
def packed_d(f, xs): return s(f, b''.join(struct.pack('<d', x) for x in xs))
def packed_f(f, xs): return s(f, b''.join(struct.pack('<f', x) for x in xs))
def tensor(dtype, shape, data): return u(1, dtype) + packed(2, shape) + s(3, data)
def frame(body): return struct.pack('>I', len(body)) + body
F32, F16, BF16, I64, U8 = 1, 2, 3, 4, 5
seeds = {}
expert = packed(1, [1, 28, 28]) + u(2, U8) + s(3, "a") + s(3, "b")
policy = u(1, 256) + u(2, 1000) + u(5, 1)
seeds['hello'] = frame(s(2, u(1, 1) + u(2, 2) + s(3, "chorus 0.1.0") + s(4, expert) + s(5, policy) + s(6, "adapt")))
task = s(1, "pets") + s(2, "cat") + s(2, "dog") + packed(3, [3, 4, 4]) + u(4, U8) + u(5, 1) + packed_d(6, [0.5]*3) + packed_d(7, [0.25]*3)
seeds['welcome'] = frame(s(3, u(1, 1) + u(2, 2) + s(3, "coordinator") + u(4, 3) + u(5, 5000) + u(6, 30000) + s(7, task)))
seeds['predict_request'] = frame(u(1, 7) + s(4, u(1, 1) + s(2, tensor(F32, [2, 3], struct.pack('<6f', *[0.1*i for i in range(6)]))) + u(3, 1000)))
seeds['predict_response'] = frame(u(1, 7) + s(5, s(1, tensor(F32, [2, 2], struct.pack('<4f', 0.25, 0.75, 1.0, 0.0))) + u(2, 1) + u(3, 10) + s(5, "cat") + s(5, "dog") + s(6, "foe") + u(7, 2) + u(8, 4)))
seeds['predict_response_f16'] = frame(u(1, 8) + s(5, s(1, tensor(F16, [1, 3], struct.pack('<3e', 0.5, 0.5, 0.0))) + u(2, 2)))
seeds['model_push'] = frame(u(1, 9) + s(6, u(1, 2) + s(2, "foe-distill") + s(3, "mlp in=4 classes=2") + u(4, 0) + u(5, 1) + u(6, 5) + s(7, bytes(32)) + s(8, b"hello")))
seeds['adapt_request'] = frame(u(1, 10) + s(7, u(1, 2) + packed_f(2, [0.1, 0.2]) + u(3, 5)))
seeds['adapt_response'] = frame(u(1, 10) + s(8, s(1, tensor(F32, [3], struct.pack('<3f', 1, 2, 3))) + s(2, tensor(F32, [3], bytes(12))) + u(3, 4) + d(4, 0.5) + d(5, 1.0)))
seeds['weights_request'] = frame(u(1, 11) + s(12, u(1, 1)))
seeds['weights_response'] = frame(u(1, 11) + s(13, s(1, "mlp in=4 classes=2") + s(2, tensor(F32, [4], struct.pack('<4f', 1, 2, 3, 4)))))
seeds['status'] = frame(u(1, 12) + s(10, u(1, 3) + s(2, "inputs must be [N, 4]")))
heartbeat = frame(s(9, u(1, 1700000000000)))
goodbye = frame(s(11, s(1, "node shutting down")))
seeds['stream'] = seeds['hello'] + heartbeat + seeds['predict_request'] + seeds['status'] + goodbye
seeds['predict_uint8'] = frame(u(1, 13) + s(4, u(1, 1) + s(2, tensor(U8, [1, 3, 4, 4], bytes(range(48))))))
seeds['predict_int64'] = frame(u(1, 14) + s(4, s(2, tensor(I64, [2], struct.pack('<2q', 1, -1)))))
seeds['predict_bf16'] = frame(u(1, 15) + s(4, s(2, tensor(BF16, [2], b'\x80\x3f\x00\x40'))))
def push(request_id, round_, model, chunks, digest=None, total=None):
    digest = digest if digest is not None else hashlib.sha256(model).digest()
    total = len(model) if total is None else total
    size = max(1, -(-len(model) // chunks))
    out = b''
    for i in range(chunks):
        part = model[i * size:(i + 1) * size]
        out += frame(u(1, request_id + i) + s(6, u(1, round_) + s(2, "foe-distill") + s(3, "mlp in=4 classes=2") +
                                             u(4, i) + u(5, chunks) + u(6, total) + s(7, digest) + s(8, part)))
    return out
model = bytes(range(256)) * 3
dispatch = {}
dispatch['push_one_chunk'] = push(1, 1, b"hello model", 1)
dispatch['push_three_chunks'] = push(1, 2, model, 3)
dispatch['push_then_older'] = push(1, 3, model, 2) + push(10, 2, b"old", 1)
def push_frames(*args, **kw):
    data, frames = push(*args, **kw), []
    while data:
        n = struct.unpack('>I', data[:4])[0]
        frames.append(data[:4 + n])
        data = data[4 + n:]
    return frames
three = push_frames(1, 1, model, 3)
dispatch['push_out_of_order'] = three[0] + three[2] + three[1]
dispatch['push_bad_digest'] = push(1, 1, model, 2, digest=bytes(32))
dispatch['push_short'] = push(1, 1, model, 2, total=len(model) + 7)
fashion = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
fit = packed(1, [1, 28, 28]) + u(2, U8) + b''.join(s(3, n) for n in ["Sandal", "Bag"])
misfit = packed(1, [3, 32, 32]) + u(2, U8) + s(3, "Hat")
dispatch['hello_fits'] = frame(s(2, u(1, 1) + u(2, 4) + s(3, "chorus 0.1.0") + s(4, fit) + s(5, policy) + s(6, "predict")))
dispatch['hello_misfits'] = frame(s(2, u(1, 1) + u(2, 4) + s(3, "chorus 0.1.0") + s(4, misfit) + s(5, policy)))
def predict(request_id, round_, rows):
    return frame(u(1, request_id) + s(4, u(1, round_) + s(2, tensor(U8, [rows, 1, 28, 28], b''))))
dispatch['predictions_spend_budget'] = b''.join(predict(i, 1 + i // 3, 900) for i in range(8))
dispatch['stream'] = dispatch['hello_fits'] + predict(1, 1, 64) + push(2, 1, b"m", 1) + predict(3, 2, 64)
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
for k, v in seeds.items():
    open(os.path.join(out, k + '.bin'), 'wb').write(v)
print(len(seeds), "seeds")
if len(sys.argv) > 2:
    os.makedirs(sys.argv[2], exist_ok=True)
    for k, v in {**seeds, **dispatch}.items():
        open(os.path.join(sys.argv[2], k + '.bin'), 'wb').write(v)
    print(len(seeds) + len(dispatch), "dispatch seeds")
