import SwellHost

/// The format version each on-disk record carries (`version=N`), and what a build does with one
/// it does not know. A record written by a newer Swell (after a downgrade, or a node plugin older
/// than the controller) is FAILED_PRECONDITION with a message that says so, and nothing is
/// changed: the call that met it stops before it writes, deletes or mounts anything.
/// `conformance/fixtures/records/` holds a data directory written in each format still read, and
/// `conformance/test_records.py` checks that this build serves it and refuses a newer one.
public enum RecordFormat {
  /// The format in `text` (a record's `version` field), checked against `current`, the newest this
  /// build reads; every older one down to 1 is read too.
  @discardableResult
  public static func check(_ text: String?, current: Int, what: String) throws -> Int {
    guard let text, let version = Int(text), version >= 1 else {
      throw SwellError(.internal, "\(what) has no valid format version (\(text ?? "missing"))")
    }
    guard version <= current else {
      throw SwellError(
        .failedPrecondition,
        "\(what) is in record format \(version), written by a newer Swell; this one reads formats 1 to \(current) "
          + "and has changed nothing: run a Swell that reads format \(version)")
    }
    return version
  }

  /// The format of a record of `fields` that gained its `version` field on 2026-12-06: one without
  /// it was written before and is format 1.
  @discardableResult
  static func check(fields: [String: String], current: Int, what: String) throws -> Int {
    try check(fields["version"] ?? "1", current: current, what: what)
  }

  /// `error` with `subject` put in front of its message when it is a newer format's refusal, which
  /// must keep its code; any other error becomes INTERNAL `fallback`, with it as the cause.
  static func rethrow(_ error: any Error, subject: String, fallback: String) -> SwellError {
    if let e = error as? SwellError, e.kind == .failedPrecondition {
      return SwellError(.failedPrecondition, "\(subject): \(e.message)")
    }
    return SwellError(.internal, fallback, cause: error)
  }
}

/// `key=value` lines (a line without `=` is skipped; the first `=` splits), as the iSCSI records
/// are written.
func keyValueLines(_ text: String) -> [String: String] {
  var fields: [String: String] = [:]
  for line in text.split(separator: "\n") {
    guard let eq = line.firstIndex(of: "=") else { continue }
    fields[String(line[..<eq])] = String(line[line.index(after: eq)...])
  }
  return fields
}
