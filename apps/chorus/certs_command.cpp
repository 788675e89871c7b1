// chorus certs init | add-node | request | sign | revoke | list | show
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
  std::string out_file;
  std::string serial;
  bool operator_role = false;
  bool renew = false;
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
      "Create a CA in DIR, and an EC P-256 key and certificate for the "
      "coordinator and each node it names (--coordinator, --nodes)");
  init->add_option("--out", args->out, "Directory to create the files in")
      ->required();
  init->add_option("--coordinator", args->coordinator_hosts,
                   "Host names or IP addresses nodes use to reach the "
                   "coordinator (comma-separated); leave out when the "
                   "coordinator sends a request of its own")
      ->delimiter(',');
  init->add_option("--nodes", args->nodes,
                   "Node names (comma-separated) whose keys the CA makes too "
                   "(for one machine; across institutions leave it out and "
                   "sign their requests)")
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

  CLI::App* request = certs->add_subcommand(
      "request",
      "At an institution: make this party's private key (it never leaves "
      "DIR) and a certificate signing request to send to the CA");
  request
      ->add_option("--name", args->name,
                   "This party's name (its identity on the roster)")
      ->required();
  request->add_option("--out", args->out, "Directory for NAME.key and NAME.csr")
      ->required();

  CLI::App* sign = certs->add_subcommand(
      "sign",
      "At the CA: issue a certificate for a request (NAME.crt beside it) and "
      "record it in the CA's index");
  sign->add_option("request", args->file, "The request (NAME.csr)")
      ->required()
      ->check(CLI::ExistingFile);
  sign->add_option("--ca", args->ca_dir, "Directory holding ca.crt and ca.key")
      ->required();
  sign->add_option("--days", args->days, "Validity of the certificate")
      ->capture_default_str()
      ->check(CLI::Range(1, 3650));
  sign->add_option("--coordinator", args->coordinator_hosts,
                   "Issue the coordinator's certificate (a TLS server) for "
                   "these host names or addresses (comma-separated)")
      ->delimiter(',');
  sign->add_flag("--operator", args->operator_role,
                 "The party is an operator (chorus predict --coordinator), "
                 "not a node");
  sign->add_flag("--renew", args->renew,
                 "Issue even though the name holds a valid certificate (the "
                 "old one stays valid until it expires or is revoked)");
  sign->add_option("--out", args->out_file,
                   "Where to write the certificate (default: NAME.crt beside "
                   "the request)");

  CLI::App* revoke = certs->add_subcommand(
      "revoke",
      "At the CA: revoke every certificate of NAME (or one, --serial) and "
      "rewrite crl.pem (give "
      "it to the coordinator, then send it SIGHUP)");
  revoke->add_option("name", args->name, "The party to revoke")->required();
  revoke->add_option("--serial", args->serial,
                     "Revoke only this certificate of NAME (e.g. the old one "
                     "after a renewal; chorus certs list shows serials)");
  revoke->add_option("--ca", args->ca_dir, "Directory holding the CA")
      ->required();

  CLI::App* list = certs->add_subcommand(
      "list", "Print what the CA issued and what it revoked");
  list->add_option("--ca", args->ca_dir, "Directory holding the CA")
      ->required();

  CLI::App* show = certs->add_subcommand(
      "show",
      "Print what a certificate allows: subject, SAN entries, validity, uses");
  show->add_option("file", args->file, "PEM certificate file")->required();

  return {
      {init,
       [args] {
         auto files = protocol::init_deployment(
             args->out, args->coordinator_hosts, args->nodes, args->days);
         print_written(files);
         if (args->nodes.empty()) {
           fmt::print(
               "\nInstitutions make their own keys ('chorus certs request'); "
               "sign their requests with 'chorus certs sign --ca {}'. Keep "
               "ca.key offline.\n",
               args->out);
         } else {
           fmt::print(
               "\nGive each node its <name>.crt, <name>.key and ca.crt; keep "
               "ca.key offline.\n");
         }
         return 0;
       }},
      {add,
       [args] {
         print_written(
             protocol::add_node(args->ca_dir, args->name, args->days));
         return 0;
       }},
      {request,
       [args] {
         print_written(protocol::request_certificate(args->out, args->name));
         fmt::print(
             "\nSend {}.csr to the federation's CA (it holds no secret); keep "
             "{}.key here.\n",
             args->name, args->name);
         return 0;
       }},
      {sign,
       [args] {
         const auto out = protocol::sign_request(
             args->ca_dir, args->file,
             protocol::SignOptions{.days = args->days,
                                   .operator_role = args->operator_role,
                                   .server_hosts = args->coordinator_hosts,
                                   .renew = args->renew,
                                   .out = args->out_file});
         const auto info = protocol::inspect_certificate(out);
         const char* role = !args->coordinator_hosts.empty() ? "coordinator"
                            : args->operator_role            ? "operator"
                                                             : "node";
         fmt::print("wrote {}  ({} '{}', serial {}, valid until {})\n",
                    out.string(), role, info.common_name, info.serial,
                    info.not_after);
         if (args->coordinator_hosts.empty()) {
           fmt::print(
               "\nSend it and ca.crt back; add '{}' to coordinator.{} and "
               "send the coordinator SIGHUP.\n",
               info.common_name, args->operator_role ? "operators" : "roster");
         }
         return 0;
       }},
      {revoke,
       [args] {
         const auto serials = protocol::revoke_certificate(
             args->ca_dir, args->name, args->serial);
         fmt::print("revoked {} certificate(s) of '{}': {}\nwrote {}\n",
                    serials.size(), args->name, fmt::join(serials, ", "),
                    (std::filesystem::path(args->ca_dir) / "crl.pem").string());
         fmt::print(
             "\nCopy crl.pem to the coordinator's tls.crl and send it SIGHUP: "
             "it drops the connections of '{}' and refuses them from then "
             "on.\n",
             args->name);
         return 0;
       }},
      {list,
       [args] {
         const auto index = protocol::read_index(args->ca_dir);
         fmt::print("{:<12} {:<11} {:<9} {:<20} {}\n", "name", "role", "status",
                    "not after", "serial");
         for (const auto& e : index) {
           fmt::print("{:<12} {:<11} {:<9} {:<20} {}\n", e.name, e.role,
                      e.revoked() ? "revoked" : "valid", e.not_after, e.serial);
         }
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
         fmt::print("allows       {}\n", fmt::join(info.allows, "; "));
         fmt::print("key          {}\n", info.key_type);
         fmt::print("sha256       {}\n", info.sha256_fingerprint);
         return 0;
       }},
  };
}

}  // namespace chorus::app
