import CSIProto
import SwellHost

/// The spec's rules for a NodePublishVolume of a volume that is already published on this node
/// (CSI v1.12 "NodePublishVolume", the second table, which applies because Swell reports
/// SINGLE_NODE_MULTI_WRITER).
///
/// What is known at publish time comes from the request (its access mode and `readonly`) and from
/// the kernel's mount table (where else the volume is bound, and whether read-only); no state file.
///
/// | access mode                       | another target | a writable publish |
/// |-----------------------------------|----------------|--------------------|
/// | SINGLE_NODE_SINGLE_WRITER         | refused        | yes                |
/// | SINGLE_NODE_WRITER (the old mode, a "non MULTI_NODE" row) | refused | yes |
/// | SINGLE_NODE_MULTI_WRITER          | allowed        | yes                |
/// | SINGLE_NODE_READER_ONLY           | allowed, when every target is read-only | refused |
///
/// Refusals are FAILED_PRECONDITION. A different `readonly` at the same target path is the
/// caller's ALREADY_EXISTS, decided where the existing mount is read.
enum PublishRules {
  /// Throws FAILED_PRECONDITION unless publishing `volume` at a new target with `mode` and
  /// `readOnly` is allowed while it is bound at `others` (other targets, from the mount table).
  static func check(
    volume: String, mode: Csi_V1_VolumeCapability.AccessMode.Mode, readOnly: Bool, others: [MountEntry]
  ) throws {
    if mode == .singleNodeReaderOnly, !readOnly {
      throw SwellError.precondition(
        "volume \(volume): access mode SINGLE_NODE_READER_ONLY allows only readonly publishes")
    }
    guard !others.isEmpty else { return }
    let where_ = others.map(\.mountPoint).joined(separator: ", ")
    switch mode {
    case .singleNodeMultiWriter:
      return
    case .singleNodeReaderOnly:
      if let writable = others.first(where: { !$0.isReadOnly }) {
        throw SwellError.precondition(
          "volume \(volume) is published writable at \(writable.mountPoint); SINGLE_NODE_READER_ONLY cannot join it")
      }
    default:
      throw SwellError.precondition(
        "volume \(volume) is already published at \(where_), and access mode \(modeName(mode)) allows one target path")
    }
  }

  static func modeName(_ mode: Csi_V1_VolumeCapability.AccessMode.Mode) -> String {
    switch mode {
    case .singleNodeWriter: "SINGLE_NODE_WRITER"
    case .singleNodeReaderOnly: "SINGLE_NODE_READER_ONLY"
    case .singleNodeSingleWriter: "SINGLE_NODE_SINGLE_WRITER"
    case .singleNodeMultiWriter: "SINGLE_NODE_MULTI_WRITER"
    default: "\(mode)"
    }
  }
}
