#include "chorus/node/service.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/log.hpp"
#include "chorus/core/version.hpp"
#include "chorus/fusion/data_files.hpp"
#include "chorus/fusion/dro.hpp"
#include "chorus/fusion/tae.hpp"
#include "chorus/node/adapt.hpp"
#include "chorus/node/audit.hpp"
#include "chorus/node/expert.hpp"
#include "chorus/protocol/digest.hpp"
#include "chorus/protocol/tensor_codec.hpp"

namespace chorus::node {

struct PredictJob {
  std::uint32_t round = 0;
  torch::Tensor inputs;  // As received: the task's dtype, unnormalised.
  std::shared_ptr<const TaskSpec> task;  // Converts them, on the worker.
  std::chrono::milliseconds wait{0};
};

namespace {

constexpr const char* kManifest = "global.json";

// Chunks of a ModelPush being reassembled.
struct Assembly {
  std::uint32_t round = 0;
  std::string algorithm, spec, sha256;
  std::uint32_t count = 0;
  std::uint64_t total = 0;
  std::uint32_t next = 0;
  std::string data;
};

}  // namespace

struct NodeService::Impl {
  std::unique_ptr<Expert> expert;
  NodeServiceOptions options;
  BudgetLedger ledger;
  RateLimiter rate;
  std::unique_ptr<AuditLog> audit;
  std::shared_ptr<spdlog::logger> log = log::get("node");

  std::mutex mutex;  // Guards what follows.
  std::uint32_t round = 0;
  std::shared_ptr<const TaskSpec> task;  // The coordinator's, from its Welcome.
  at::Generator noise = at::make_generator<at::CPUGeneratorImpl>(0);
  std::optional<Assembly> assembly;
  std::optional<StoredModel> stored;
  // The tae model of the stored round, loaded on first use.
  std::mutex tae_mutex;  // Guards what follows (adaptation takes a while).
  std::optional<fusion::TaeModel> tae;
  std::uint32_t tae_round = 0;
  // The dro initialisation of the stored round, loaded on first use.
  std::optional<fusion::FusedModel> dro;
  std::uint32_t dro_round = 0;

  Impl(std::unique_ptr<Expert> e, NodeServiceOptions o)
      : expert(std::move(e)),
        options(std::move(o)),
        ledger(options.policy.budget, options.state_dir.empty()
                                          ? std::filesystem::path()
                                          : options.state_dir / "budget.json"),
        rate(options.policy.rate_limit) {
    options.policy.validate();
    noise = at::make_generator<at::CPUGeneratorImpl>(options.policy.noise_seed);
    if (!options.audit_log.empty()) {
      audit = std::make_unique<AuditLog>(options.audit_log);
    }
  }

  torch::Tensor shape_output(torch::Tensor p) {
    const auto& pol = options.policy;
    if (pol.temperature != 1.0) {
      p = (p.clamp_min(1e-12).log() / pol.temperature).softmax(1);
    }
    if (pol.noise_std > 0) {
      torch::Tensor eps;
      {
        std::lock_guard lock(mutex);
        eps = at::normal(0.0, pol.noise_std, p.sizes(), noise);
      }
      p = (p + eps).clamp_min(0);
      auto sums = p.sum(1, /*keepdim=*/true);
      // A row the noise zeroed entirely becomes uniform.
      p = torch::where(
          sums > 0, p / sums.clamp_min(1e-12),
          torch::full_like(p, 1.0 / static_cast<double>(p.size(1))));
    }
    switch (pol.output_form) {
      case OutputForm::kTopK: {
        const auto k = std::min<std::int64_t>(pol.top_k, p.size(1));
        auto [values, index] = p.topk(k, 1);
        p = torch::zeros_like(p).scatter_(1, index, values);
        break;
      }
      case OutputForm::kLabelOnly:
        p = torch::zeros_like(p).scatter_(1, p.argmax(1, /*keepdim=*/true),
                                          1.0);
        break;
      case OutputForm::kProbabilities:
        break;
    }
    return p.contiguous();
  }
};

NodeService::NodeService(std::unique_ptr<Expert> expert,
                         NodeServiceOptions options)
    : impl_(std::make_unique<Impl>(std::move(expert), std::move(options))) {
  if (!impl_->options.state_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(impl_->options.state_dir, ec);
    CHORUS_CHECK_CODE(!ec, Code::kInternal,
                      "cannot create state directory '{}': {}",
                      impl_->options.state_dir.string(), ec.message());
    impl_->stored = read_stored_model(impl_->options.state_dir);
  }
}

NodeService::~NodeService() = default;

protocol::Hello NodeService::hello() const {
  const auto& e = *impl_->expert;
  const auto& pol = impl_->options.policy;
  protocol::Hello h;
  h.software = fmt::format("chorus {}", kVersion);
  h.expert.input_shape = e.input_shape();
  h.expert.input_dtype = protocol::DType::kFloat32;
  h.expert.labels = e.labels();
  h.expert.metadata = impl_->options.metadata;
  auto& p = h.policy;
  p.max_batch = static_cast<std::uint64_t>(pol.budget.max_batch);
  if (pol.budget.total_budget) {
    p.total_budget = static_cast<std::uint64_t>(*pol.budget.total_budget);
  }
  if (pol.budget.round_budget) {
    p.round_budget = static_cast<std::uint64_t>(*pol.budget.round_budget);
  }
  if (auto left = impl_->ledger.total_remaining()) {
    p.total_remaining = static_cast<std::uint64_t>(*left);
  }
  p.rate_limit = pol.rate_limit;
  p.output_form = pol.output_form;
  p.top_k = static_cast<std::uint32_t>(pol.top_k);
  p.temperature = pol.temperature;
  p.noise_std = pol.noise_std;
  h.capabilities = {"predict", "model_push"};
  if (impl_->options.shots) h.capabilities.push_back("adapt");
  if (e.options().share_weights && e.builtin_model() &&
      !e.options().spec.empty()) {
    h.capabilities.push_back("weights");
  }
  return h;
}

std::optional<std::string> NodeService::accept_task(
    const std::optional<TaskSpec>& task) {
  if (task) {
    const auto& e = *impl_->expert;
    if (auto why = task_mismatch(*task, e.input_shape(), InputDType::kFloat32,
                                 e.labels(), "this node's expert")) {
      impl_->log->error("event=task_refused task={} reason=\"{}\"", task->name,
                        *why);
      return why;
    }
    impl_->log->info(
        "event=task_accepted task={} input=\"{}\" normalisation={} labels={}",
        task->name, task->describe_input(),
        normalisation_name(task->normalisation), task->labels.size());
  }
  std::lock_guard lock(impl_->mutex);
  impl_->task = task ? std::make_shared<const TaskSpec>(*task) : nullptr;
  return std::nullopt;
}

std::shared_ptr<PredictJob> NodeService::admit_predict(
    const protocol::PredictCall& req) {
  std::shared_ptr<const TaskSpec> task;
  {
    std::lock_guard lock(impl_->mutex);
    task = impl_->task;
  }
  // With a task, inputs come in its dtype and shape ([H, W] experts take
  // [1, H, W] tasks); float32 is always accepted.
  const auto shape = task ? task->input_shape : impl_->expert->input_shape();
  const bool uint8_ok = task && task->dtype == InputDType::kUInt8;
  std::int64_t per_input = 1;
  for (auto d : shape) per_input *= d;
  const auto expected = fmt::format("{} [N, {}] with 1 <= N <= {}",
                                    uint8_ok ? "uint8 (or float32)" : "float32",
                                    fmt::join(shape, ", "),
                                    impl_->options.policy.budget.max_batch);
  // Cheap checks on the header before decoding any bytes.
  using protocol::DType;
  CHORUS_CHECK(req.inputs.dtype == DType::kFloat32 ||
                   (uint8_ok && req.inputs.dtype == DType::kUInt8),
               "inputs must be {}; got dtype {}", expected,
               protocol::wire_dtype_name(req.inputs.dtype));
  protocol::TensorLimits limits;
  limits.max_elements = std::max<std::int64_t>(
      per_input, per_input * impl_->options.policy.budget.max_batch);
  CHORUS_CHECK(!req.inputs.shape.empty() &&
                   req.inputs.rows() <= impl_->options.policy.budget.max_batch,
               "inputs must be {}; got a batch of {}", expected,
               req.inputs.rows());
  auto inputs = protocol::to_tensor(req.inputs, limits);
  std::vector<std::int64_t> got(inputs.sizes().begin(), inputs.sizes().end());
  const bool shape_ok =
      inputs.dim() == static_cast<std::int64_t>(shape.size()) + 1 &&
      std::equal(shape.begin(), shape.end(), got.begin() + 1) &&
      inputs.size(0) > 0;
  CHORUS_CHECK(shape_ok, "inputs must be {}; got [{}]", expected,
               fmt::join(got, ", "));
  CHORUS_CHECK(!protocol::has_non_finite(inputs),
               "inputs hold NaN or infinite values; this node refuses them");
  {
    std::lock_guard lock(impl_->mutex);
    if (req.round > impl_->round) {
      impl_->round = req.round;
      impl_->ledger.start_round();
    }
  }
  const auto n = inputs.size(0);
  const auto deadline =
      std::chrono::milliseconds(req.deadline_ms ? req.deadline_ms : 60000);
  // Rate first: a request refused for the rate spends no budget.
  auto wait = impl_->rate.reserve(n, deadline / 2);
  impl_->ledger.charge(n);
  auto job = std::make_shared<PredictJob>();
  job->round = req.round;
  job->inputs = std::move(inputs);
  job->task = std::move(task);
  job->wait = wait;
  return job;
}

std::chrono::milliseconds NodeService::wait_of(const PredictJob& job) {
  return job.wait;
}

protocol::PredictAnswer NodeService::run_predict(PredictJob& job) {
  if (job.task) {
    // Scaled and normalised as the task says, in the shape the expert takes
    // ([H, W] experts fit [1, H, W] tasks).
    auto x = fusion::to_model_inputs(job.inputs, *job.task);
    std::vector<std::int64_t> shape{x.size(0)};
    const auto& own = impl_->expert->input_shape();
    shape.insert(shape.end(), own.begin(), own.end());
    job.inputs = x.reshape(shape);
  }
  std::vector<torch::Tensor> parts;
  const auto step = std::max<std::int64_t>(1, impl_->options.inference_batch);
  for (std::int64_t i = 0; i < job.inputs.size(0); i += step) {
    parts.push_back(impl_->expert->predict(job.inputs.slice(0, i, i + step)));
  }
  auto probs = impl_->shape_output(torch::cat(parts));
  protocol::PredictAnswer reply;
  reply.outputs = protocol::to_blob(probs);
  reply.form = impl_->options.policy.output_form;
  if (auto left = impl_->ledger.total_remaining()) {
    reply.budget_remaining = static_cast<std::uint64_t>(*left);
  }
  reply.noise_std = impl_->options.policy.noise_std;
  job.inputs = torch::Tensor();
  return reply;
}

protocol::Ack NodeService::receive_model_chunk(const protocol::ModelChunk& c) {
  std::lock_guard lock(impl_->mutex);
  auto& a = impl_->assembly;
  auto discard = [&](Code code, const std::string& why) {
    a.reset();
    impl_->log->warn("event=model_push_rejected round={} code={} reason=\"{}\"",
                     c.round, code_name(code), why);
    fail(code, "{}; the push is discarded and the previous model kept", why);
  };
  if (c.chunk_count == 0 || c.chunk_index >= c.chunk_count) {
    discard(Code::kInvalidArgument,
            fmt::format("chunk {} of {} is not a valid chunk", c.chunk_index,
                        c.chunk_count));
  }
  if (c.total_bytes > impl_->options.max_model_bytes) {
    discard(Code::kResourceExhausted,
            fmt::format("a model of {} bytes exceeds this node's limit of {}",
                        c.total_bytes, impl_->options.max_model_bytes));
  }
  if (c.sha256.size() != 32) {
    discard(Code::kInvalidArgument,
            fmt::format("the digest has {} bytes, SHA-256 needs 32",
                        c.sha256.size()));
  }
  if (c.chunk_index == 0) {
    a = Assembly{.round = c.round,
                 .algorithm = c.algorithm,
                 .spec = c.spec,
                 .sha256 = c.sha256,
                 .count = c.chunk_count,
                 .total = c.total_bytes,
                 .next = 0,
                 .data = {}};
    a->data.reserve(c.total_bytes);
  } else if (!a || a->round != c.round || a->count != c.chunk_count ||
             a->total != c.total_bytes || a->sha256 != c.sha256 ||
             a->next != c.chunk_index) {
    discard(
        Code::kFailedPrecondition,
        fmt::format("chunk {} of round {} arrived out of order (expected {})",
                    c.chunk_index, c.round,
                    a ? fmt::format("chunk {} of round {}", a->next, a->round)
                      : std::string("chunk 0")));
  }
  if (a->data.size() + c.data.size() > a->total) {
    discard(Code::kDataLoss,
            fmt::format("the chunks exceed the announced {} bytes", a->total));
  }
  a->data += c.data;
  ++a->next;
  if (a->next < a->count) {
    return protocol::Ack{.message =
                             fmt::format("chunk {} of {} received",
                                         c.chunk_index + 1, c.chunk_count)};
  }
  if (a->data.size() != a->total) {
    discard(Code::kDataLoss,
            fmt::format("the model has {} bytes, {} were announced",
                        a->data.size(), a->total));
  }
  if (protocol::sha256(a->data) != a->sha256) {
    discard(Code::kDataLoss, "the model's SHA-256 digest does not match");
  }
  CHORUS_CHECK_CODE(!impl_->options.state_dir.empty(),
                    Code::kFailedPrecondition,
                    "this node has no state directory to store models in");
  auto stored = store_global_model(impl_->options.state_dir, a->round,
                                   a->algorithm, a->spec, a->data);
  impl_->log->info("event=model_stored round={} algorithm={} bytes={} file={}",
                   stored.round, stored.algorithm, a->total,
                   stored.file.string());
  impl_->stored = stored;
  a.reset();
  return protocol::Ack{
      .message = fmt::format("model of round {} stored", stored.round)};
}

protocol::AdaptAnswer NodeService::adapt(const protocol::AdaptCall& req) {
  CHORUS_CHECK_CODE(
      impl_->options.shots != nullptr, Code::kFailedPrecondition,
      "this node has no labelled shots to adapt with (node config: "
      "[adapt] shots_per_class)");
  std::optional<StoredModel> stored;
  {
    std::lock_guard lock(impl_->mutex);
    stored = impl_->stored;
  }
  CHORUS_CHECK_CODE(
      stored && (stored->algorithm == "tae" || stored->algorithm == "dro"),
      Code::kFailedPrecondition,
      "no tae or dro global model has been pushed to this node (it holds {})",
      stored ? "a '" + stored->algorithm + "' model" : std::string("none"));
  std::lock_guard tae_lock(impl_->tae_mutex);
  if (stored->algorithm == "dro") {
    if (!impl_->dro || impl_->dro_round != stored->round) {
      impl_->dro.emplace(fusion::load_fused_model(stored->file));
      impl_->dro_round = stored->round;
    }
    const auto& labels = impl_->expert->labels();
    const auto classes = classes_in_space(*impl_->dro, labels);
    auto outcome = adapt_dro(*impl_->dro, classes, labels,
                             *impl_->options.shots, req.max_steps);
    outcome.round = stored->round;
    // The adapted weights stay here (adapted.pt); only counts leave.
    const auto written = write_adapted(impl_->options.state_dir, outcome);
    impl_->log->info(
        "event=adapted algorithm=dro round={} shots={} shot_accuracy={:.3f} "
        "written={}",
        req.round, outcome.shots, outcome.shot_accuracy, written.string());
    return protocol::AdaptAnswer{
        .shots = static_cast<std::uint32_t>(outcome.shots),
        .shot_accuracy = outcome.shot_accuracy};
  }
  if (!impl_->tae || impl_->tae_round != stored->round) {
    impl_->tae.emplace(fusion::TaeModel::load(stored->file));
    impl_->tae_round = stored->round;
  }
  auto& model = *impl_->tae;
  const auto classes = classes_of(model, impl_->expert->labels());
  torch::Tensor tau;
  if (!req.task_descriptor.empty()) {
    CHORUS_CHECK(
        static_cast<std::int64_t>(req.task_descriptor.size()) ==
            model.task_dim(),
        "the task descriptor has {} entries, the global model takes {}",
        req.task_descriptor.size(), model.task_dim());
    tau = torch::tensor(req.task_descriptor);
  }
  auto outcome = adapt_tae(model, classes, *impl_->options.shots, tau);
  outcome.round = stored->round;
  // The adapted model stays here: `chorus node adapt` and local use read it.
  const auto written = write_adapted(impl_->options.state_dir, outcome);
  const auto& result = outcome.adaptation;
  impl_->log->info(
      "event=adapted round={} shots={} bound={:.4f} gibbs={:.4f} kl={:.4f} "
      "shot_accuracy={:.3f} written={}",
      req.round, outcome.shots, result.bound, result.gibbs_loss, result.kl,
      outcome.shot_accuracy, written.string());
  return protocol::AdaptAnswer{
      .embedding_mean = protocol::to_blob(result.posterior.mean),
      .embedding_logvar = protocol::to_blob(result.posterior.logvar),
      .shots = static_cast<std::uint32_t>(outcome.shots),
      .bound = result.bound,
      .shot_accuracy = outcome.shot_accuracy};
}

protocol::WeightsAnswer NodeService::weights(const protocol::WeightsCall& req) {
  const auto& e = *impl_->expert;
  CHORUS_CHECK_CODE(e.options().share_weights, Code::kPermissionDenied,
                    "this node does not share its weights (node config: "
                    "[expert] share_weights = false)");
  auto model = e.builtin_model();
  CHORUS_CHECK_CODE(model != nullptr && !e.options().spec.empty(),
                    Code::kFailedPrecondition,
                    "this node's expert is not a builtin model of a known "
                    "architecture: it has no weights to share");
  auto flat = fusion::flatten_model(*model);
  impl_->log->info("event=weights_shared round={} spec=\"{}\" parameters={}",
                   req.round, e.options().spec, flat.numel());
  return protocol::WeightsAnswer{.spec = e.options().spec,
                                 .parameters = protocol::to_blob(flat)};
}

void NodeService::record(const std::string& peer, const RequestSummary& request,
                         Code outcome, const std::string& message,
                         std::chrono::steady_clock::duration latency) {
  if (!impl_->audit) return;
  AuditRecord r;
  r.peer = peer;
  r.kind = request.kind;
  r.request_id = request.request_id;
  r.round = request.round;
  r.inputs = request.inputs;
  r.outcome = std::string(code_name(outcome));
  r.message = message;
  r.budget_left = impl_->ledger.total_remaining();
  r.latency_ms = std::chrono::duration<double, std::milli>(latency).count();
  impl_->audit->append(r);
}

std::optional<StoredModel> NodeService::stored_model() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->stored;
}

std::int64_t NodeService::inputs_answered() const {
  return impl_->ledger.spent();
}

StoredModel store_global_model(const std::filesystem::path& state_dir,
                               std::uint32_t round,
                               const std::string& algorithm,
                               const std::string& spec,
                               const std::string& bytes) {
  StoredModel stored{
      .round = round,
      .algorithm = algorithm,
      .spec = spec,
      .sha256_hex = protocol::to_hex(protocol::sha256(bytes)),
      .file = state_dir / fmt::format("global-round-{}.pt", round)};
  write_file_atomic(stored.file, bytes);
  nlohmann::json manifest{
      {"round", stored.round}, {"algorithm", stored.algorithm},
      {"spec", stored.spec},   {"sha256", stored.sha256_hex},
      {"bytes", bytes.size()}, {"file", stored.file.filename().string()}};
  write_file_atomic(state_dir / kManifest, manifest.dump(2) + "\n");
  return stored;
}

std::optional<StoredModel> read_stored_model(
    const std::filesystem::path& state_dir) {
  const auto path = state_dir / kManifest;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return std::nullopt;
  try {
    auto j = nlohmann::json::parse(read_file(path));
    return StoredModel{.round = j.at("round").get<std::uint32_t>(),
                       .algorithm = j.at("algorithm").get<std::string>(),
                       .spec = j.at("spec").get<std::string>(),
                       .sha256_hex = j.at("sha256").get<std::string>(),
                       .file = state_dir / j.at("file").get<std::string>()};
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail(Code::kDataLoss, "corrupt model manifest '{}': {}", path.string(),
         e.what());
  }
}

}  // namespace chorus::node
