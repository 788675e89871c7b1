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
/// ca.crt/ca.key, coordinator.crt/.key (SANs: `coordinator_hosts`; none:
/// the coordinator sends a request too, see `SignOptions::server_hosts`) and
/// <node>.crt/.key per node (none: institutions send requests, see
/// `sign_request`), the CA's index and an empty CRL. Keys are written with
/// mode 0600, atomically.
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
  /// What it allows, in words ("TLS server (a coordinator)", "TLS client
  /// (a node or an operator)", "signs certificates and CRLs").
  std::vector<std::string> allows;
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

// ---- Certificates whose private keys never leave their owner ----------
//
// An institution runs `chorus certs request` (its key is generated there and
// stays there), sends the CSR to the federation's CA, which runs `chorus
// certs sign` and sends back the certificate. The CA keeps an index of what
// it issued (`index.txt` beside ca.key) and a certificate revocation list
// (`crl.pem`) that the coordinator checks on every handshake.

/// A private key and a certificate signing request for it, PEM-encoded.
struct KeyRequest {
  std::string key_pem;
  std::string csr_pem;
};

/// A new EC P-256 key and a CSR naming `name` (the party's identity).
/// Throws `chorus::Error` (INVALID_ARGUMENT for a bad name).
KeyRequest make_request(const std::string& name);

/// `chorus certs request`: writes `<name>.key` (mode 0600) and `<name>.csr`
/// in `out_dir` (created). Returns the files written. Throws
/// `chorus::Error` (ALREADY_EXISTS when `<name>.key` is there: a key is
/// never overwritten).
std::vector<std::filesystem::path> request_certificate(
    const std::filesystem::path& out_dir, const std::string& name);

/// One certificate the CA issued: a line of its `index.txt`.
struct IssuedCertificate {
  std::string serial;  ///< Upper-case hex, as `CertInfo::serial`.
  std::string name;    ///< The certificate's CN.
  std::string role;    ///< "coordinator", "node" or "operator".
  std::string not_after;
  std::string revoked_at;  ///< Empty while it is not revoked.
  bool revoked() const { return !revoked_at.empty(); }
};

/// The CA's index (`ca_dir/index.txt`). A CA made before the index existed
/// is indexed from the certificates in `ca_dir`. Throws `chorus::Error`
/// (NOT_FOUND without a CA, DATA_LOSS for a malformed line).
std::vector<IssuedCertificate> read_index(const std::filesystem::path& ca_dir);

/// How `sign_request` issues.
struct SignOptions {
  int days = 365;
  /// Record the party as an operator (`chorus predict --coordinator`)
  /// rather than a node; the certificate is the same kind (TLS client).
  bool operator_role = false;
  /// Issue a coordinator's certificate (TLS server and client) whose alt
  /// names are these host names or addresses; empty: a TLS client's.
  std::vector<std::string> server_hosts;
  /// Issue even though a valid certificate for the name exists (a renewal;
  /// the old one stays valid until it expires or is revoked).
  bool renew = false;
  /// Where to write the certificate; empty: `<name>.crt` beside the CSR.
  std::filesystem::path out;
};

/// `chorus certs sign`: checks the CSR's signature and name, issues a TLS
/// client certificate for it with the CA in `ca_dir`, records it in the
/// index, and writes it. Returns the certificate's path. Throws
/// `chorus::Error` (DATA_LOSS for a CSR that does not parse or verify,
/// INVALID_ARGUMENT for a bad name, ALREADY_EXISTS when a valid
/// certificate was issued for the name and `renew` is not set).
std::filesystem::path sign_request(const std::filesystem::path& ca_dir,
                                   const std::filesystem::path& csr_file,
                                   const SignOptions& options = {});

/// `chorus certs revoke`: marks every unrevoked certificate issued to
/// `name` revoked — or only the one with `serial` (hex, any case: an old
/// certificate after a renewal) — and rewrites `ca_dir/crl.pem`. Returns
/// the serials revoked. Throws `chorus::Error` (NOT_FOUND when the CA
/// issued nothing to `name` or no such serial, FAILED_PRECONDITION when it
/// is revoked already).
std::vector<std::string> revoke_certificate(const std::filesystem::path& ca_dir,
                                            const std::string& name,
                                            const std::string& serial = {});

/// Writes `ca_dir/crl.pem` from the index: a version 2 CRL signed by the
/// CA, valid until the CA expires. Returns its path.
std::filesystem::path write_crl(const std::filesystem::path& ca_dir);

/// The subject CN of a PEM CSR. Throws `chorus::Error` (DATA_LOSS).
std::string request_common_name(const std::string& csr_pem);

}  // namespace chorus::protocol
