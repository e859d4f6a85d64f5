/// The Linux capabilities this process holds, from `CapEff` in `/proc/self/status`.
public enum ProcessCapabilities {
  /// CAP_SYS_RESOURCE: ext4's online resize (EXT4_IOC_RESIZE_FS) refuses to run without it.
  public static let sysResource = 24
  /// CAP_SYS_ADMIN: mount, losetup and xfs_growfs need it.
  public static let sysAdmin = 21

  /// True when the effective set holds capability number `bit`; nil when it cannot be read.
  public static func has(_ bit: Int) -> Bool? {
    guard let status = try? readSmallFile("/proc/self/status") else { return nil }
    return parseEffective(status).map { $0 & (UInt64(1) << UInt64(bit)) != 0 }
  }

  /// The `CapEff` mask from the text of `/proc/<pid>/status`.
  public static func parseEffective(_ status: String) -> UInt64? {
    for line in status.split(separator: "\n") where line.hasPrefix("CapEff:") {
      return UInt64(line.dropFirst("CapEff:".count).trimmingWhitespace(), radix: 16)
    }
    return nil
  }
}
