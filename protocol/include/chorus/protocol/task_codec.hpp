#pragma once

#include <optional>

#include "chorus/core/task.hpp"
#include "chorus/v1/chorus.pb.h"

/// Conversion between `chorus::TaskSpec` and the wire `chorus.v1.TaskSpec`
/// (protocol 1.2), and the checks both ends run on a node's expert
/// descriptor. No torch, no Asio.
namespace chorus::protocol {

/// Writes `task` into `out`.
void encode_task(const TaskSpec& task, v1::TaskSpec* out);

/// The task a wire message describes, validated. Throws `chorus::Error`
/// (INVALID_ARGUMENT) naming what is wrong: an unknown dtype or
/// normalisation, no labels, a non-positive dimension, statistics of the
/// wrong count.
TaskSpec decode_task(const v1::TaskSpec& wire);

/// The task announced in a Welcome; nullopt for a 1.1 coordinator's (none).
std::optional<TaskSpec> task_of(const v1::Welcome& welcome);

/// Why the expert `descriptor` announces does not fit `task` (naming both
/// sides' values), or nullopt. `who` names the expert ("node 'alpha'").
std::optional<std::string> descriptor_mismatch(
    const TaskSpec& task, const v1::ExpertDescriptor& descriptor,
    std::string_view who);

}  // namespace chorus::protocol
