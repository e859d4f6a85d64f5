/// Reads the block-style YAML subset that kubeconfig files are written in (kubectl, kind, kubeadm and
/// the cloud CLIs all write it): nested mappings, sequences (indented or not), plain and quoted scalars,
/// comments, and the empty flow values `{}` and `[]`. A file that starts with `{` is read as JSON.
/// Anything else (anchors, block scalars, flow collections with content) is refused with its line number.
public enum MiniYAML {
  public struct ParseError: Error, CustomStringConvertible {
    public let line: Int
    public let reason: String
    public var description: String { "kubeconfig line \(line): \(reason)" }
  }

  struct Line {
    var indent: Int
    var text: Substring
    let number: Int
  }

  public static func parse(_ source: String) throws -> JSON {
    let trimmed = source.drop(while: { $0 == " " || $0 == "\n" || $0 == "\t" || $0 == "\r" })
    if trimmed.first == "{" { return try JSON.parse(String(trimmed)) }
    var lines: [Line] = []
    for (index, raw) in source.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
      var text = raw.last == "\r" ? raw.dropLast() : raw
      text = stripComment(text)
      let indent = text.prefix(while: { $0 == " " }).count
      text = text.dropFirst(indent)
      while text.last == " " || text.last == "\t" { text = text.dropLast() }
      if text.isEmpty || text == "---" { continue }
      if text.hasPrefix("\t") { throw ParseError(line: index + 1, reason: "tabs are not YAML indentation") }
      lines.append(Line(indent: indent, text: text, number: index + 1))
    }
    var parser = Parser(lines: lines)
    guard !lines.isEmpty else { return .emptyObject }
    let value = try parser.node(indent: lines[0].indent)
    if parser.index < lines.count {
      throw ParseError(line: lines[parser.index].number, reason: "unexpected indentation")
    }
    return value
  }

  static func stripComment(_ text: Substring) -> Substring {
    var quote: Character?
    var previous: Character = " "
    for index in text.indices {
      let c = text[index]
      if let q = quote {
        if c == q { quote = nil }
      } else if c == "'" || c == "\"" {
        if previous == " " || previous == ":" || previous == "-" { quote = c }
      } else if c == "#" && (previous == " " || index == text.startIndex) {
        return text[..<index]
      }
      previous = c
    }
    return text
  }

  struct Parser {
    var lines: [Line]
    var index = 0

    mutating func node(indent: Int) throws -> JSON {
      let line = lines[index]
      if line.text == "-" || line.text.hasPrefix("- ") { return try sequence(indent: indent) }
      return try mapping(indent: indent)
    }

    mutating func mapping(indent: Int) throws -> JSON {
      var fields: [String: JSON] = [:]
      while index < lines.count, lines[index].indent == indent {
        let line = lines[index]
        if line.text == "-" || line.text.hasPrefix("- ") { break }
        guard let (key, rest) = try splitKey(line) else {
          throw ParseError(line: line.number, reason: "expected `key: value`")
        }
        index += 1
        if !rest.isEmpty {
          fields[key] = try scalar(rest, line: line.number)
        } else if index < lines.count, lines[index].indent > indent {
          fields[key] = try node(indent: lines[index].indent)
        } else if index < lines.count, lines[index].indent == indent,
          lines[index].text == "-" || lines[index].text.hasPrefix("- ")
        {
          fields[key] = try sequence(indent: indent)
        } else {
          fields[key] = .null
        }
      }
      return .object(fields)
    }

    mutating func sequence(indent: Int) throws -> JSON {
      var items: [JSON] = []
      while index < lines.count, lines[index].indent == indent,
        lines[index].text == "-" || lines[index].text.hasPrefix("- ")
      {
        let line = lines[index]
        let content = line.text.dropFirst(1).drop(while: { $0 == " " })
        if content.isEmpty {
          index += 1
          if index < lines.count, lines[index].indent > indent {
            items.append(try node(indent: lines[index].indent))
          } else {
            items.append(.null)
          }
          continue
        }
        let contentIndent = indent + (line.text.count - content.count)
        let asLine = Line(indent: contentIndent, text: content, number: line.number)
        let isMapping = try splitKey(asLine) != nil
        if content.hasPrefix("- ") || isMapping {
          lines[index] = asLine
          items.append(try node(indent: contentIndent))
        } else {
          index += 1
          items.append(try scalar(content, line: line.number))
        }
      }
      return .array(items)
    }

    /// Splits `key: rest` (or `key:`), honouring a quoted key; nil when the line is no mapping entry.
    func splitKey(_ line: Line) throws -> (String, Substring)? {
      let text = line.text
      var key: String
      var rest: Substring
      if let q = text.first, q == "\"" || q == "'" {
        guard let end = text.dropFirst().firstIndex(of: q) else { return nil }
        key = String(text[text.index(after: text.startIndex)..<end])
        rest = text[text.index(after: end)...]
        guard rest.first == ":" else { return nil }
        rest = rest.dropFirst()
      } else {
        var found: String.Index?
        var i = text.startIndex
        while i < text.endIndex {
          if text[i] == ":" {
            let next = text.index(after: i)
            if next == text.endIndex || text[next] == " " {
              found = i
              break
            }
          }
          i = text.index(after: i)
        }
        guard let colon = found else { return nil }
        key = String(text[..<colon])
        rest = text[text.index(after: colon)...]
      }
      if !rest.isEmpty && rest.first != " " { return nil }
      return (key, rest.drop(while: { $0 == " " }))
    }

    func scalar(_ text: Substring, line: Int) throws -> JSON {
      if text == "{}" { return .emptyObject }
      if text == "[]" { return .array([]) }
      if let first = text.first, "&*!|>{[".contains(first) {
        throw ParseError(line: line, reason: "YAML feature `\(first)` is not supported in a kubeconfig here")
      }
      if text.first == "\"" {
        guard text.count >= 2, text.last == "\"" else { throw ParseError(line: line, reason: "unterminated string") }
        return .string(try unescape(text.dropFirst().dropLast(), line: line))
      }
      if text.first == "'" {
        guard text.count >= 2, text.last == "'" else { throw ParseError(line: line, reason: "unterminated string") }
        return .string(String(text.dropFirst().dropLast()).replacing("''", with: "'"))
      }
      switch text {
      case "true", "True", "TRUE": return .bool(true)
      case "false", "False", "FALSE": return .bool(false)
      case "null", "~", "Null", "NULL": return .null
      default: break
      }
      if let i = Int64(text) { return .int(i) }
      return .string(String(text))
    }

    func unescape(_ text: Substring, line: Int) throws -> String {
      var out = ""
      var escaping = false
      for c in text {
        if escaping {
          switch c {
          case "n": out.append("\n")
          case "t": out.append("\t")
          case "\\", "\"", "/": out.append(c)
          default: throw ParseError(line: line, reason: "unsupported escape \\\(c)")
          }
          escaping = false
        } else if c == "\\" {
          escaping = true
        } else {
          out.append(c)
        }
      }
      return out
    }
  }
}
