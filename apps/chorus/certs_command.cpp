// chorus certs init | add-node | show
#include "certs_command.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <memory>
#include <string>

#include "chorus/protocol/certs.hpp"

namespace chorus::app {
namespace {

struct CertsArgs {
  std::string out;
  std::vector<std::string> coordinator_hosts;
  std::vector<std::string> nodes;
  int days = 365;
  std::string name;
  std::string ca_dir;
  std::string file;
};

void print_written(const std::vector<std::filesystem::path>& files) {
  for (const auto& f : files) {
    fmt::print("wrote {}{}\n", f.string(),
               f.extension() == ".key" ? "  (private key, mode 0600)" : "");
  }
}

}  // namespace

std::vector<std::pair<CLI::App*, std::function<int()>>> add_certs_commands(
    CLI::App& app) {
  auto args = std::make_shared<CertsArgs>();
  CLI::App* certs = app.add_subcommand(
      "certs", "Create and inspect the deployment's CA and certificates");
  certs->require_subcommand(1);

  CLI::App* init = certs->add_subcommand(
      "init",
      "Create a CA and an EC P-256 key and certificate per party in DIR");
  init->add_option("--out", args->out, "Directory to create the files in")
      ->required();
  init->add_option("--coordinator", args->coordinator_hosts,
                   "Host names or IP addresses nodes use to reach the "
                   "coordinator (comma-separated)")
      ->required()
      ->delimiter(',');
  init->add_option("--nodes", args->nodes, "Node names (comma-separated)")
      ->required()
      ->delimiter(',');
  init->add_option("--days", args->days, "Validity of the leaf certificates")
      ->capture_default_str()
      ->check(CLI::Range(1, 3650));

  CLI::App* add =
      certs->add_subcommand("add-node",
                            "Add one client key and certificate (a node, or an "
                            "operator for chorus predict) to an existing CA");
  add->add_option("name", args->name, "The node's name (its identity)")
      ->required();
  add->add_option("--ca", args->ca_dir, "Directory holding ca.crt and ca.key")
      ->required();
  add->add_option("--days", args->days, "Validity of the certificate")
      ->capture_default_str()
      ->check(CLI::Range(1, 3650));

  CLI::App* show = certs->add_subcommand(
      "show", "Print a certificate's subject, SAN entries and validity");
  show->add_option("file", args->file, "PEM certificate file")->required();

  return {
      {init,
       [args] {
         auto files = protocol::init_deployment(
             args->out, args->coordinator_hosts, args->nodes, args->days);
         print_written(files);
         fmt::print(
             "\nGive each node its <name>.crt, <name>.key and ca.crt; keep "
             "ca.key offline.\n");
         return 0;
       }},
      {add,
       [args] {
         print_written(
             protocol::add_node(args->ca_dir, args->name, args->days));
         return 0;
       }},
      {show,
       [args] {
         auto info = protocol::inspect_certificate(args->file);
         fmt::print("subject      {}\n", info.subject);
         fmt::print("issuer       {}\n", info.issuer);
         fmt::print("serial       {}\n", info.serial);
         fmt::print(
             "alt names    {}\n",
             info.subject_alt_names.empty()
                 ? std::string("(none)")
                 : fmt::format("{}", fmt::join(info.subject_alt_names, ", ")));
         fmt::print("not before   {}{}\n", info.not_before,
                    info.not_yet_valid ? "  (NOT YET VALID)" : "");
         fmt::print("not after    {}{}\n", info.not_after,
                    info.expired ? "  (EXPIRED)" : "");
         fmt::print("ca           {}\n", info.is_ca ? "yes" : "no");
         fmt::print("key          {}\n", info.key_type);
         fmt::print("sha256       {}\n", info.sha256_fingerprint);
         return 0;
       }},
  };
}

}  // namespace chorus::app
