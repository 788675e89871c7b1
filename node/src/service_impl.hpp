#pragma once
// NodeService's state, shared by the files that implement it (service.cpp:
// identity and audit; predict.cpp; model_store.cpp; service_adapt.cpp).
// Private to node/src.

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <memory>
#include <mutex>
#include <optional>
#include <random>

#include "chorus/core/log.hpp"
#include "chorus/fusion/fused_model.hpp"
#include "chorus/fusion/tae.hpp"
#include "chorus/node/budget.hpp"
#include "chorus/node/expert.hpp"
#include "chorus/node/model_assembly.hpp"
#include "chorus/node/service.hpp"
#include "chorus/protocol/audit.hpp"

namespace chorus::node {

struct PredictJob {
  std::uint32_t round = 0;
  torch::Tensor inputs;  // As received: the task's dtype, unnormalised.
  std::shared_ptr<const TaskSpec> task;  // Converts them, on the worker.
  std::chrono::milliseconds wait{0};
};

struct NodeService::Impl {
  std::unique_ptr<Expert> expert;
  NodeServiceOptions options;
  BudgetLedger ledger;
  RateLimiter rate;
  std::unique_ptr<protocol::AuditLog> audit;
  std::shared_ptr<spdlog::logger> log = log::get("node");

  std::mutex mutex;  // Guards what follows.
  std::uint32_t round = 0;
  std::uint32_t claimed_round = 0;  // The last round refused, logged once.
  // The coordinator's round as this session knows it: its Welcome's, then
  // the newest it pushed. Older pushes are refused.
  std::uint32_t coordinator_round = 0;
  std::shared_ptr<const TaskSpec> task;  // The coordinator's, from its Welcome.
  at::Generator noise = at::make_generator<at::CPUGeneratorImpl>(0);
  ModelAssembly assembly{options.max_model_bytes};
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
    if (options.policy.budget.privacy) {
      // The guarantee needs noise nobody can predict: not a configured seed.
      std::random_device device;
      noise = at::make_generator<at::CPUGeneratorImpl>(
          (std::uint64_t{device()} << 32) | device());
    }
    if (!options.audit_log.empty()) {
      std::optional<protocol::AuditSigner> signer;
      if (!options.audit_key_pem.empty()) {
        signer = protocol::AuditSigner{.name = options.audit_signer,
                                       .key_pem = options.audit_key_pem,
                                       .seal_every = options.audit_seal_every};
      }
      audit = std::make_unique<protocol::AuditLog>(options.audit_log,
                                                   std::move(signer));
    }
  }

  // The answer as the policy lets it leave: temperature, noise, form.
  torch::Tensor shape_output(torch::Tensor p);
};

}  // namespace chorus::node
