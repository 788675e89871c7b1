#pragma once

#include <optional>

#include "chorus/protocol/messages.hpp"
#include "chorus/v1/chorus.pb.h"

/// The codec: chorus.v1 wire messages to the values of messages.hpp and
/// back. With the sessions that move envelopes (channel, node session,
/// coordinator registry), the only code that sees protobuf types. Decoding
/// validates what a value cannot hold (unknown enums, a malformed task) and
/// throws `chorus::Error` naming it; shapes and bytes of tensors are checked
/// where they become torch tensors (tensor_codec.hpp). No torch, no Asio.
namespace chorus::protocol {

/// A value's wire dtype, and back. `decode_dtype` throws INVALID_ARGUMENT
/// ("tensor has unknown dtype N") for an unknown or unspecified one.
v1::DType encode_dtype(DType dtype);
DType decode_dtype(v1::DType wire);

/// Tensors: moved, not copied, when given an rvalue.
void encode_blob(TensorBlob blob, v1::Tensor* out);
TensorBlob decode_blob(v1::Tensor&& wire);
TensorBlob decode_blob(const v1::Tensor& wire);

/// The task: `decode_task` validates it (INVALID_ARGUMENT naming what is
/// wrong: an unknown dtype or normalisation, no labels, a non-positive
/// dimension, statistics of the wrong count).
void encode_task(const TaskSpec& task, v1::TaskSpec* out);
TaskSpec decode_task(const v1::TaskSpec& wire);

/// Hello and Welcome (the Welcome's task decoded and validated).
v1::Hello encode_hello(const Hello& hello);
Hello decode_hello(const v1::Hello& wire);
v1::Welcome encode_welcome(const Welcome& welcome);
Welcome decode_welcome(const v1::Welcome& wire);

/// A message as the body of an envelope (request_id left 0).
v1::Envelope envelope_of(PredictCall call);
v1::Envelope envelope_of(PredictAnswer answer);
v1::Envelope envelope_of(ModelChunk chunk);
v1::Envelope envelope_of(AdaptCall call);
v1::Envelope envelope_of(const WeightsCall& call);
v1::Envelope envelope_of(WeightsAnswer answer);
v1::Envelope envelope_of(AdaptAnswer answer);
/// An OK Status.
v1::Envelope envelope_of(const Ack& ack);
v1::Envelope envelope_of(const NodeRequest& request);

/// The request an envelope carries. Throws UNIMPLEMENTED for a body that
/// is not a node's request.
NodeRequest node_request_of(v1::Envelope&& envelope);
/// The PredictCall an envelope carries. Throws UNIMPLEMENTED otherwise.
PredictCall predict_call_of(v1::Envelope&& envelope);

/// A reply of the expected kind. Throws DATA_LOSS naming `who` when the peer
/// answered with another body (a Status reply has already become an error
/// in `Connection::request`).
PredictAnswer predict_answer_of(v1::Envelope&& reply, std::string_view who);
AdaptAnswer adapt_answer_of(v1::Envelope&& reply, std::string_view who);
/// A WeightsResponse; DATA_LOSS when the reply is something else.
WeightsAnswer weights_answer_of(v1::Envelope&& reply, std::string_view who);
Ack ack_of(const v1::Envelope& reply, std::string_view who);

/// A StatusRequest, and the coordinator's StatusResponse.
v1::Envelope status_request();
v1::Envelope envelope_of(const CoordinatorStatus& status);
/// A StatusResponse; DATA_LOSS naming `who` when the reply is something
/// else.
CoordinatorStatus status_of(const v1::Envelope& reply, std::string_view who);

}  // namespace chorus::protocol
