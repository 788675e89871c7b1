#pragma once

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

/// Certificate provisioning for a deployment (OpenSSL 3, no shelling out):
/// one CA, and an EC P-256 key and certificate per party signed by it. A
/// party's identity is its certificate's CN.
namespace chorus::protocol {

/// What a certificate is for.
enum class CertRole {
  kCa,           ///< Signs the others.
  kCoordinator,  ///< TLS server (and client) auth; SANs are its host names.
  kNode,         ///< TLS client auth; SAN is DNS:<name>.
};

/// A private key and its certificate, PEM-encoded.
struct KeyPair {
  std::string key_pem;
  std::string cert_pem;
};

/// Validity of a new certificate.
struct Validity {
  /// Start relative to now (negative: in the past, e.g. for tests of
  /// expired certificates).
  std::chrono::seconds not_before_offset{-300};
  /// Length in days from the start.
  int days = 365;
};

/// A new self-signed CA named `name`. Throws `chorus::Error`.
KeyPair make_ca(const std::string& name, const Validity& validity = {});

/// A new key and a certificate for `name` signed by `ca`. `hosts` become
/// SANs (IP addresses as IP:, names as DNS:); a node's name is always a SAN.
/// Throws `chorus::Error` (INVALID_ARGUMENT for a bad name or host, INTERNAL
/// for OpenSSL failures).
KeyPair issue_certificate(const KeyPair& ca, const std::string& name,
                          CertRole role, const std::vector<std::string>& hosts,
                          const Validity& validity = {});

/// `chorus certs init`: creates `dir` (which must not hold a CA yet) with
/// ca.crt/ca.key, coordinator.crt/.key (SANs: `coordinator_hosts`) and
/// <node>.crt/.key per node. Keys are written with mode 0600, atomically.
/// Returns the files written. Throws `chorus::Error` (ALREADY_EXISTS when
/// `dir` already holds a CA, INVALID_ARGUMENT for bad or duplicate names).
std::vector<std::filesystem::path> init_deployment(
    const std::filesystem::path& dir,
    const std::vector<std::string>& coordinator_hosts,
    const std::vector<std::string>& nodes, int days = 365);

/// `chorus certs add-node`: issues <name>.crt/.key with the CA in `ca_dir`,
/// touching no existing file. Throws `chorus::Error` (ALREADY_EXISTS when
/// the node's files exist, NOT_FOUND when the CA is missing).
std::vector<std::filesystem::path> add_node(const std::filesystem::path& ca_dir,
                                            const std::string& name,
                                            int days = 365);

/// What `chorus certs show` prints.
struct CertInfo {
  std::string subject;
  std::string common_name;  ///< The subject's CN (empty when it has none).
  std::string issuer;
  std::string serial;
  std::vector<std::string> subject_alt_names;
  std::string not_before;
  std::string not_after;
  bool is_ca = false;
  bool expired = false;
  bool not_yet_valid = false;
  /// Whole days until it expires (negative once expired).
  int days_left = 0;
  std::string key_type;
  std::string sha256_fingerprint;
};

/// Parses a PEM certificate. Throws `chorus::Error` (NOT_FOUND, DATA_LOSS).
CertInfo inspect_certificate_pem(const std::string& pem);
/// Reads and parses a PEM certificate file.
CertInfo inspect_certificate(const std::filesystem::path& file);

/// The common name of a PEM certificate's subject.
std::string certificate_common_name(const std::string& pem);

/// Checks a party's own certificate `file` before it starts (`who`: "the
/// coordinator's", "node 'a''s"): FAILED_PRECONDITION when it has expired
/// or is not valid yet, or when `expected_name` is given and differs from
/// its common name (a party is known by its certificate's name). Returns
/// what it read; callers warn when `days_left` is small.
CertInfo check_own_certificate(const std::filesystem::path& file,
                               const std::string& who,
                               const std::string& expected_name = {});

}  // namespace chorus::protocol
