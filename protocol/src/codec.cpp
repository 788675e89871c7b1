#include "chorus/protocol/codec.hpp"

#include "chorus/core/error.hpp"

namespace chorus::protocol {
namespace {

v1::OutputForm encode_form(OutputForm form) {
  switch (form) {
    case OutputForm::kTopK:
      return v1::OUTPUT_FORM_TOP_K;
    case OutputForm::kLabelOnly:
      return v1::OUTPUT_FORM_LABEL_ONLY;
    case OutputForm::kProbabilities:
      break;
  }
  return v1::OUTPUT_FORM_PROBABILITIES;
}

// Unknown forms read as probabilities, as the wire says of UNSPECIFIED.
OutputForm decode_form(v1::OutputForm wire) {
  switch (wire) {
    case v1::OUTPUT_FORM_TOP_K:
      return OutputForm::kTopK;
    case v1::OUTPUT_FORM_LABEL_ONLY:
      return OutputForm::kLabelOnly;
    default:
      return OutputForm::kProbabilities;
  }
}

}  // namespace

v1::DType encode_dtype(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return v1::DTYPE_FLOAT32;
    case DType::kFloat16:
      return v1::DTYPE_FLOAT16;
    case DType::kBFloat16:
      return v1::DTYPE_BFLOAT16;
    case DType::kInt64:
      return v1::DTYPE_INT64;
    case DType::kUInt8:
      return v1::DTYPE_UINT8;
    case DType::kUnspecified:
      break;
  }
  return v1::DTYPE_UNSPECIFIED;
}

DType decode_dtype(v1::DType wire) {
  switch (wire) {
    case v1::DTYPE_FLOAT32:
      return DType::kFloat32;
    case v1::DTYPE_FLOAT16:
      return DType::kFloat16;
    case v1::DTYPE_BFLOAT16:
      return DType::kBFloat16;
    case v1::DTYPE_INT64:
      return DType::kInt64;
    case v1::DTYPE_UINT8:
      return DType::kUInt8;
    default:
      fail(Code::kInvalidArgument, "tensor has unknown dtype {}",
           static_cast<int>(wire));
  }
}

void encode_blob(TensorBlob blob, v1::Tensor* out) {
  out->set_dtype(encode_dtype(blob.dtype));
  out->clear_shape();
  for (auto d : blob.shape) out->add_shape(d);
  out->set_data(std::move(blob.data));
}

TensorBlob decode_blob(v1::Tensor&& wire) {
  TensorBlob blob;
  blob.dtype = decode_dtype(wire.dtype());
  blob.shape.assign(wire.shape().begin(), wire.shape().end());
  blob.data = std::move(*wire.mutable_data());
  return blob;
}

TensorBlob decode_blob(const v1::Tensor& wire) {
  return decode_blob(v1::Tensor(wire));
}

void encode_task(const TaskSpec& task, v1::TaskSpec* out) {
  out->Clear();
  out->set_name(task.name);
  for (const auto& l : task.labels.names()) out->add_labels(l);
  for (auto d : task.input_shape) out->add_input_shape(d);
  out->set_input_dtype(task.dtype == InputDType::kUInt8 ? v1::DTYPE_UINT8
                                                        : v1::DTYPE_FLOAT32);
  switch (task.normalisation) {
    case Normalisation::kNone:
      out->set_normalisation(v1::NORMALISATION_NONE);
      break;
    case Normalisation::kPerChannel:
      out->set_normalisation(v1::NORMALISATION_PER_CHANNEL);
      break;
    case Normalisation::kPerFeature:
      out->set_normalisation(v1::NORMALISATION_PER_FEATURE);
      break;
  }
  for (auto m : task.mean) out->add_mean(m);
  for (auto s : task.std) out->add_std(s);
}

TaskSpec decode_task(const v1::TaskSpec& wire) {
  TaskSpec t;
  t.name = wire.name();
  t.labels = LabelSpace({wire.labels().begin(), wire.labels().end()});
  t.input_shape.assign(wire.input_shape().begin(), wire.input_shape().end());
  switch (wire.input_dtype()) {
    case v1::DTYPE_FLOAT32:
      t.dtype = InputDType::kFloat32;
      break;
    case v1::DTYPE_UINT8:
      t.dtype = InputDType::kUInt8;
      break;
    default:
      fail(
          Code::kInvalidArgument,
          "the task's input dtype must be DTYPE_FLOAT32 or DTYPE_UINT8, got {}",
          static_cast<int>(wire.input_dtype()));
  }
  switch (wire.normalisation()) {
    case v1::NORMALISATION_NONE:
      t.normalisation = Normalisation::kNone;
      break;
    case v1::NORMALISATION_PER_CHANNEL:
      t.normalisation = Normalisation::kPerChannel;
      break;
    case v1::NORMALISATION_PER_FEATURE:
      t.normalisation = Normalisation::kPerFeature;
      break;
    default:
      fail(Code::kInvalidArgument, "the task's normalisation {} is unknown",
           static_cast<int>(wire.normalisation()));
  }
  t.mean.assign(wire.mean().begin(), wire.mean().end());
  t.std.assign(wire.std().begin(), wire.std().end());
  t.validate();
  CHORUS_CHECK(
      !t.needs_statistics(),
      "the task '{}' asks for {} normalisation but carries no statistics",
      t.name, normalisation_name(t.normalisation));
  return t;
}

v1::Hello encode_hello(const Hello& hello) {
  v1::Hello h;
  h.set_protocol_major(hello.protocol_major);
  h.set_protocol_minor(hello.protocol_minor);
  h.set_software(hello.software);
  auto* d = h.mutable_expert();
  for (auto s : hello.expert.input_shape) d->add_input_shape(s);
  d->set_input_dtype(encode_dtype(hello.expert.input_dtype));
  for (const auto& l : hello.expert.labels) d->add_labels(l);
  for (const auto& [k, v] : hello.expert.metadata)
    (*d->mutable_metadata())[k] = v;
  for (auto t : hello.expert.task_descriptor) d->add_task_descriptor(t);
  const auto& pol = hello.policy;
  auto* p = h.mutable_policy();
  p->set_max_batch(pol.max_batch);
  if (pol.total_budget) p->set_total_budget(*pol.total_budget);
  if (pol.round_budget) p->set_round_budget(*pol.round_budget);
  if (pol.total_remaining) p->set_total_remaining(*pol.total_remaining);
  p->set_rate_limit(pol.rate_limit);
  p->set_output_form(encode_form(pol.output_form));
  p->set_top_k(pol.top_k);
  p->set_temperature(pol.temperature);
  p->set_noise_std(pol.noise_std);
  for (const auto& g : pol.privacy) {
    auto* w = p->add_privacy();
    w->set_mechanism(g.mechanism);
    w->set_epsilon(g.epsilon);
    w->set_delta(g.delta);
    w->set_epsilon_spent(g.epsilon_spent);
    w->set_accountant(g.accountant);
    for (const auto& [k, v] : g.parameters) (*w->mutable_parameters())[k] = v;
  }
  for (const auto& c : hello.capabilities) h.add_capabilities(c);
  return h;
}

Hello decode_hello(const v1::Hello& wire) {
  Hello h;
  h.protocol_major = wire.protocol_major();
  h.protocol_minor = wire.protocol_minor();
  h.software = wire.software();
  const auto& e = wire.expert();
  h.expert.input_shape.assign(e.input_shape().begin(), e.input_shape().end());
  // An expert that names no dtype (or one this build does not know) fits
  // no task that checks it: left unspecified, not refused here.
  h.expert.input_dtype = e.input_dtype() == v1::DTYPE_UINT8 ? DType::kUInt8
                         : e.input_dtype() == v1::DTYPE_FLOAT32
                             ? DType::kFloat32
                             : DType::kUnspecified;
  h.expert.labels.assign(e.labels().begin(), e.labels().end());
  h.expert.metadata.insert(e.metadata().begin(), e.metadata().end());
  h.expert.task_descriptor.assign(e.task_descriptor().begin(),
                                  e.task_descriptor().end());
  const auto& p = wire.policy();
  h.policy.max_batch = p.max_batch();
  if (p.has_total_budget()) h.policy.total_budget = p.total_budget();
  if (p.has_round_budget()) h.policy.round_budget = p.round_budget();
  if (p.has_total_remaining()) h.policy.total_remaining = p.total_remaining();
  h.policy.rate_limit = p.rate_limit();
  h.policy.output_form = decode_form(p.output_form());
  h.policy.top_k = p.top_k();
  h.policy.temperature = p.temperature();
  h.policy.noise_std = p.noise_std();
  for (const auto& w : p.privacy()) {
    h.policy.privacy.push_back(
        {.mechanism = w.mechanism(),
         .epsilon = w.epsilon(),
         .delta = w.delta(),
         .epsilon_spent = w.epsilon_spent(),
         .accountant = w.accountant(),
         .parameters = {w.parameters().begin(), w.parameters().end()}});
  }
  h.capabilities.assign(wire.capabilities().begin(), wire.capabilities().end());
  return h;
}

v1::Welcome encode_welcome(const Welcome& welcome) {
  v1::Welcome w;
  w.set_protocol_major(welcome.protocol_major);
  w.set_protocol_minor(welcome.protocol_minor);
  w.set_coordinator(welcome.coordinator);
  w.set_round(welcome.round);
  w.set_heartbeat_interval_ms(welcome.heartbeat_interval_ms);
  w.set_idle_timeout_ms(welcome.idle_timeout_ms);
  if (welcome.task) encode_task(*welcome.task, w.mutable_task());
  return w;
}

Welcome decode_welcome(const v1::Welcome& wire) {
  Welcome w;
  w.protocol_major = wire.protocol_major();
  w.protocol_minor = wire.protocol_minor();
  w.coordinator = wire.coordinator();
  w.round = wire.round();
  w.heartbeat_interval_ms = wire.heartbeat_interval_ms();
  w.idle_timeout_ms = wire.idle_timeout_ms();
  if (wire.has_task()) w.task = decode_task(wire.task());
  return w;
}

v1::Envelope envelope_of(PredictCall call) {
  v1::Envelope e;
  auto* r = e.mutable_predict_request();
  r->set_round(call.round);
  r->set_deadline_ms(call.deadline_ms);
  encode_blob(std::move(call.inputs), r->mutable_inputs());
  return e;
}

v1::Envelope envelope_of(PredictAnswer answer) {
  v1::Envelope e;
  auto* r = e.mutable_predict_response();
  encode_blob(std::move(answer.outputs), r->mutable_outputs());
  r->set_form(encode_form(answer.form));
  if (answer.budget_remaining)
    r->set_budget_remaining(*answer.budget_remaining);
  r->set_noise_std(answer.noise_std);
  for (auto& l : answer.labels) r->add_labels(std::move(l));
  r->set_algorithm(std::move(answer.algorithm));
  r->set_fused_round(answer.fused_round);
  r->set_expert_queries(answer.expert_queries);
  r->set_expert_cost(answer.expert_cost);
  for (auto& name : answer.experts_away) r->add_experts_away(std::move(name));
  return e;
}

v1::Envelope envelope_of(ModelChunk chunk) {
  v1::Envelope e;
  auto* p = e.mutable_model_push();
  p->set_round(chunk.round);
  p->set_algorithm(std::move(chunk.algorithm));
  p->set_spec(std::move(chunk.spec));
  p->set_chunk_index(chunk.chunk_index);
  p->set_chunk_count(chunk.chunk_count);
  p->set_total_bytes(chunk.total_bytes);
  p->set_sha256(std::move(chunk.sha256));
  p->set_data(std::move(chunk.data));
  return e;
}

v1::Envelope envelope_of(AdaptCall call) {
  v1::Envelope e;
  auto* r = e.mutable_adapt_request();
  r->set_round(call.round);
  for (auto t : call.task_descriptor) r->add_task_descriptor(t);
  r->set_max_steps(call.max_steps);
  return e;
}

v1::Envelope envelope_of(AdaptAnswer answer) {
  v1::Envelope e;
  auto* r = e.mutable_adapt_response();
  // dro's answers carry no embedding.
  if (answer.embedding_mean.dtype != DType::kUnspecified) {
    encode_blob(std::move(answer.embedding_mean), r->mutable_embedding_mean());
  }
  if (answer.embedding_logvar.dtype != DType::kUnspecified) {
    encode_blob(std::move(answer.embedding_logvar),
                r->mutable_embedding_logvar());
  }
  r->set_shots(answer.shots);
  r->set_bound(answer.bound);
  r->set_shot_accuracy(answer.shot_accuracy);
  return e;
}

v1::Envelope envelope_of(const WeightsCall& call) {
  v1::Envelope e;
  e.mutable_weights_request()->set_round(call.round);
  return e;
}

v1::Envelope envelope_of(WeightsAnswer answer) {
  v1::Envelope e;
  auto* r = e.mutable_weights_response();
  r->set_spec(std::move(answer.spec));
  encode_blob(std::move(answer.parameters), r->mutable_parameters());
  return e;
}

v1::Envelope envelope_of(const Ack& ack) {
  v1::Envelope e;
  e.mutable_status()->set_code(v1::CODE_OK);
  e.mutable_status()->set_message(ack.message);
  return e;
}

v1::Envelope envelope_of(const NodeRequest& request) {
  return std::visit([](const auto& r) { return envelope_of(r); }, request);
}

NodeRequest node_request_of(v1::Envelope&& e) {
  switch (e.body_case()) {
    case v1::Envelope::kPredictRequest:
      return predict_call_of(std::move(e));
    case v1::Envelope::kModelPush: {
      auto& p = *e.mutable_model_push();
      return ModelChunk{.round = p.round(),
                        .algorithm = std::move(*p.mutable_algorithm()),
                        .spec = std::move(*p.mutable_spec()),
                        .chunk_index = p.chunk_index(),
                        .chunk_count = p.chunk_count(),
                        .total_bytes = p.total_bytes(),
                        .sha256 = std::move(*p.mutable_sha256()),
                        .data = std::move(*p.mutable_data())};
    }
    case v1::Envelope::kAdaptRequest: {
      const auto& a = e.adapt_request();
      return AdaptCall{.round = a.round(),
                       .task_descriptor = {a.task_descriptor().begin(),
                                           a.task_descriptor().end()},
                       .max_steps = a.max_steps()};
    }
    case v1::Envelope::kWeightsRequest:
      return WeightsCall{.round = e.weights_request().round()};
    default:
      fail(Code::kUnimplemented, "this node does not serve this request");
  }
}

PredictCall predict_call_of(v1::Envelope&& e) {
  CHORUS_CHECK_CODE(e.has_predict_request(), Code::kUnimplemented,
                    "expected a PredictRequest");
  auto& r = *e.mutable_predict_request();
  return PredictCall{.round = r.round(),
                     .inputs = decode_blob(std::move(*r.mutable_inputs())),
                     .deadline_ms = r.deadline_ms()};
}

PredictAnswer predict_answer_of(v1::Envelope&& reply, std::string_view who) {
  CHORUS_CHECK_CODE(reply.has_predict_response(), Code::kDataLoss,
                    "{} answered a Predict with something else", who);
  auto& r = *reply.mutable_predict_response();
  PredictAnswer a;
  a.outputs = decode_blob(std::move(*r.mutable_outputs()));
  a.form = decode_form(r.form());
  if (r.has_budget_remaining()) a.budget_remaining = r.budget_remaining();
  a.noise_std = r.noise_std();
  a.labels.assign(r.labels().begin(), r.labels().end());
  a.algorithm = r.algorithm();
  a.fused_round = r.fused_round();
  a.expert_queries = r.expert_queries();
  a.expert_cost = r.expert_cost();
  a.experts_away.assign(r.experts_away().begin(), r.experts_away().end());
  return a;
}

WeightsAnswer weights_answer_of(v1::Envelope&& reply, std::string_view who) {
  CHORUS_CHECK_CODE(reply.has_weights_response(), Code::kDataLoss,
                    "{} answered a WeightsRequest with something else", who);
  auto& r = *reply.mutable_weights_response();
  CHORUS_CHECK_CODE(r.has_parameters(), Code::kDataLoss,
                    "{} sent no parameters", who);
  return WeightsAnswer{
      .spec = std::move(*r.mutable_spec()),
      .parameters = decode_blob(std::move(*r.mutable_parameters()))};
}

AdaptAnswer adapt_answer_of(v1::Envelope&& reply, std::string_view who) {
  CHORUS_CHECK_CODE(reply.has_adapt_response(), Code::kDataLoss,
                    "{} answered an AdaptRequest with something else", who);
  auto& r = *reply.mutable_adapt_response();
  AdaptAnswer answer{.shots = r.shots(),
                     .bound = r.bound(),
                     .shot_accuracy = r.shot_accuracy()};
  if (r.has_embedding_mean()) {
    answer.embedding_mean = decode_blob(std::move(*r.mutable_embedding_mean()));
  }
  if (r.has_embedding_logvar()) {
    answer.embedding_logvar =
        decode_blob(std::move(*r.mutable_embedding_logvar()));
  }
  return answer;
}

Ack ack_of(const v1::Envelope& reply, std::string_view who) {
  CHORUS_CHECK_CODE(reply.has_status(), Code::kDataLoss,
                    "{} acknowledged with something other than a Status", who);
  return Ack{.message = reply.status().message()};
}

v1::Envelope status_request() {
  v1::Envelope e;
  e.mutable_status_request();
  return e;
}

v1::Envelope envelope_of(const CoordinatorStatus& s) {
  v1::Envelope e;
  auto* w = e.mutable_status_response();
  w->set_coordinator(s.coordinator);
  w->set_algorithm(s.algorithm);
  w->set_round(s.round);
  w->set_rounds(s.rounds);
  w->set_rounds_done(s.rounds_done);
  w->set_phase(s.phase);
  w->set_phase_seconds(s.phase_seconds);
  w->set_inputs(s.inputs);
  w->set_bytes_sent(s.bytes_sent);
  w->set_bytes_received(s.bytes_received);
  for (const auto& n : s.nodes) {
    auto* o = w->add_nodes();
    o->set_name(n.name);
    o->set_state(n.state);
    o->set_reason(n.reason);
    o->set_last_heard_ms(n.last_heard_ms);
    o->set_round_asked(n.round_asked);
    o->set_round_answered(n.round_answered);
    o->set_inputs(n.inputs);
    o->set_bytes_sent(n.bytes_sent);
    o->set_bytes_received(n.bytes_received);
  }
  return e;
}

CoordinatorStatus status_of(const v1::Envelope& reply, std::string_view who) {
  CHORUS_CHECK_CODE(reply.has_status_response(), Code::kDataLoss,
                    "{} answered a StatusRequest with something other than a "
                    "StatusResponse",
                    who);
  const auto& w = reply.status_response();
  CoordinatorStatus s{.coordinator = w.coordinator(),
                      .algorithm = w.algorithm(),
                      .round = w.round(),
                      .rounds = w.rounds(),
                      .rounds_done = w.rounds_done(),
                      .phase = w.phase(),
                      .phase_seconds = w.phase_seconds(),
                      .nodes = {},
                      .inputs = w.inputs(),
                      .bytes_sent = w.bytes_sent(),
                      .bytes_received = w.bytes_received()};
  for (const auto& n : w.nodes()) {
    s.nodes.push_back(NodeStatus{.name = n.name(),
                                 .state = n.state(),
                                 .reason = n.reason(),
                                 .last_heard_ms = n.last_heard_ms(),
                                 .round_asked = n.round_asked(),
                                 .round_answered = n.round_answered(),
                                 .inputs = n.inputs(),
                                 .bytes_sent = n.bytes_sent(),
                                 .bytes_received = n.bytes_received()});
  }
  return s;
}

}  // namespace chorus::protocol
