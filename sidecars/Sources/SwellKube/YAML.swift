import Yams

/// YAML documents (kubeconfig files) read with Yams, as the ``JSON`` values the rest of the client uses.
enum YAMLDocument {
  /// The first document of `text`; an empty document is an empty object. Anchors and aliases,
  /// flow collections, block scalars and JSON all read as YAML 1.1 says, with the core schema's
  /// tags deciding between null, booleans, numbers and strings.
  ///
  /// An error says what and where, never the text around it: a kubeconfig holds tokens and keys.
  static func parse(_ text: String) throws -> JSON {
    let root: Node?
    do { root = try Yams.compose(yaml: text) } catch let error as YamlError {
      throw YAMLError(problem: summary(error))
    }
    guard let root else { return .emptyObject }
    return try json(root)
  }

  private static func summary(_ error: YamlError) -> String {
    switch error {
    case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _),
      .composer(_, let problem, let mark, _):
      return "\(problem) at line \(mark.line), column \(mark.column)"
    case .reader(let problem, let offset, _, _):
      return "\(problem) at byte \(offset ?? 0)"
    case .duplicatedKeysInMapping(let duplicates, _):
      return "duplicated keys \(duplicates.sorted().joined(separator: ", "))"
    default:
      return "unreadable"
    }
  }

  private static func json(_ node: Node) throws -> JSON {
    switch node {
    case .scalar(let scalar):
      switch Tag.Name(rawValue: node.tag.rawValue) {
      case .null: return .null
      case .bool: if let value = node.bool { return .bool(value) }
      case .int: if let value = node.int { return .int(Int64(value)) }
      case .float: if let value = node.float { return .double(value) }
      default: break
      }
      return .string(scalar.string)
    case .sequence(let sequence):
      return .array(try sequence.map(json))
    case .mapping(let mapping):
      var fields: [String: JSON] = [:]
      for (key, value) in mapping {
        guard case .scalar(let name) = key else {
          throw YAMLError("a mapping key that is not a scalar", key)
        }
        fields[name.string] = try json(value)
      }
      return .object(fields)
    case .alias(let alias):
      throw YAMLError("an alias (*\(alias.anchor.rawValue)) that was not resolved", node)
    }
  }
}

/// A YAML document this client cannot turn into JSON.
public struct YAMLError: Error, CustomStringConvertible {
  public let description: String
  init(problem: String) { description = problem }
  init(_ problem: String, _ node: Node) {
    description = problem + (node.mark.map { " at line \($0.line), column \($0.column)" } ?? "")
  }
}
