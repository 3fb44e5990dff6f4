//! The parser: turns tokens into the syntax tree once, following Go 1.19's
//! text/template/parse/parse.go (its grammar, its error messages, and its refusal of
//! undefined variables and unknown functions), plus what fleet refuses because it cannot
//! evaluate it: nesting beyond [`MAX_NESTING`](super::MAX_NESTING) and the constructs fleet
//! does not implement (`define`, `template`, `block`, `call`, complex numbers, a few time
//! methods). What Go finds out only when a command runs (a wrong argument count, a literal of
//! the wrong type, an invalid regular expression) fails the render, as in Prometheus, so
//! that every file promtool accepts loads.

use std::collections::HashMap;
use std::fmt;

use regex::Regex;

use super::MAX_NESTING;
use super::funcs::{self, FUNCS};
use super::goregex;
use super::lex::{Item, Kind, lex};
use super::strconv::{parse_float, parse_int, parse_uint, unquote, unquote_char};
use super::value::Value;

#[derive(Debug, Clone)]
pub(super) enum Node {
    Text(String),
    /// `{{ pipeline }}`: printed unless it declares variables.
    Action(Pipe),
    /// `{{if}}` and `{{with}}`, with their `else if` / `else with` chains as further branches.
    If(Control),
    With(Control),
    Range(RangeNode),
    Break,
    Continue,
}

#[derive(Debug, Clone)]
pub(super) struct Control {
    pub(super) branches: Vec<(Pipe, Vec<Node>)>,
    pub(super) otherwise: Option<Vec<Node>>,
}

#[derive(Debug, Clone)]
pub(super) struct RangeNode {
    pub(super) pipe: Pipe,
    pub(super) list: Vec<Node>,
    pub(super) otherwise: Option<Vec<Node>>,
}

#[derive(Debug, Clone)]
pub(super) struct Pipe {
    pub(super) pos: usize,
    /// Variables declared (`:=`) or assigned (`=`) with the pipeline's value.
    pub(super) decl: Vec<String>,
    pub(super) is_assign: bool,
    pub(super) cmds: Vec<Command>,
}

#[derive(Debug, Clone)]
pub(super) struct Command {
    pub(super) pos: usize,
    pub(super) args: Vec<Operand>,
}

#[derive(Debug, Clone)]
pub(super) enum Operand {
    /// `.A.B`, relative to dot.
    Field {
        pos: usize,
        idents: Vec<String>,
    },
    /// `$x.A.B`.
    Variable {
        pos: usize,
        name: String,
        fields: Vec<String>,
    },
    /// `(pipeline).A.B` or `func.A`.
    Chain {
        pos: usize,
        base: Box<Operand>,
        fields: Vec<String>,
    },
    /// A function, by its index in [`FUNCS`].
    Func {
        pos: usize,
        id: usize,
    },
    Pipe(Box<Pipe>),
    Dot(usize),
    Nil(usize),
    Bool(usize, bool),
    Number(Number),
    Str {
        pos: usize,
        quoted: String,
        value: String,
    },
}

impl Operand {
    pub(super) fn pos(&self) -> usize {
        match self {
            Operand::Field { pos, .. }
            | Operand::Variable { pos, .. }
            | Operand::Chain { pos, .. }
            | Operand::Func { pos, .. }
            | Operand::Dot(pos)
            | Operand::Nil(pos)
            | Operand::Bool(pos, _)
            | Operand::Str { pos, .. } => *pos,
            Operand::Pipe(p) => p.pos,
            Operand::Number(n) => n.pos,
        }
    }

    fn is_literal(&self) -> bool {
        matches!(self, Operand::Bool(..) | Operand::Number(_) | Operand::Str { .. } | Operand::Nil(_) | Operand::Dot(_))
    }
}

/// A number literal, with every Go type it can be read as (Go's `NumberNode`).
#[derive(Debug, Clone)]
pub(super) struct Number {
    pub(super) pos: usize,
    pub(super) text: String,
    pub(super) int: Option<i64>,
    pub(super) uint: Option<u64>,
    pub(super) float: Option<f64>,
}

impl Number {
    /// The value of the literal where no type is expected (Go's `idealConstant`): a float if
    /// it is written like one, else an int.
    pub(super) fn ideal(&self) -> Result<Value, String> {
        let t = &self.text;
        let hex_int = t.len() > 2 && (t.starts_with("0x") || t.starts_with("0X")) && !t.contains(['p', 'P']);
        let rune_int = t.starts_with('\'');
        if let Some(f) = self.float
            && !hex_int
            && !rune_int
            && t.contains(['.', 'e', 'E', 'p', 'P'])
        {
            return Ok(Value::Float(f));
        }
        match self.int {
            Some(i) => Ok(Value::Int(i)),
            None => Err(format!("{t} overflows int")),
        }
    }
}

impl fmt::Display for Operand {
    /// Go's `Node.String`, for messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operand::Field { idents, .. } => idents.iter().try_for_each(|i| write!(f, ".{i}")),
            Operand::Variable { name, fields, .. } => {
                write!(f, "{name}")?;
                fields.iter().try_for_each(|i| write!(f, ".{i}"))
            }
            Operand::Chain { base, fields, .. } => {
                match base.as_ref() {
                    Operand::Pipe(p) => write!(f, "({p})")?,
                    other => write!(f, "{other}")?,
                }
                fields.iter().try_for_each(|i| write!(f, ".{i}"))
            }
            Operand::Func { id, .. } => write!(f, "{}", FUNCS[*id].name),
            Operand::Pipe(p) => write!(f, "{p}"),
            Operand::Dot(_) => write!(f, "."),
            Operand::Nil(_) => write!(f, "nil"),
            Operand::Bool(_, b) => write!(f, "{b}"),
            Operand::Number(n) => write!(f, "{}", n.text),
            Operand::Str { quoted, .. } => write!(f, "{quoted}"),
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, arg) in self.args.iter().enumerate() {
            if i > 0 {
                write!(f, " ")?;
            }
            match arg {
                Operand::Pipe(p) => write!(f, "({p})")?,
                other => write!(f, "{other}")?,
            }
        }
        Ok(())
    }
}

impl fmt::Display for Pipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.decl.is_empty() {
            write!(f, "{} {} ", self.decl.join(", "), if self.is_assign { "=" } else { ":=" })?;
        }
        for (i, c) in self.cmds.iter().enumerate() {
            if i > 0 {
                write!(f, " | ")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

/// "line:column" of a byte offset, 1-based.
pub(super) fn position(src: &str, pos: usize) -> String {
    let before = &src[..pos.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("{line}:{col}")
}

/// The variables every alert template has: Prometheus prepends
/// `{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}{{$externalURL := .ExternalURL}}{{$value := .Value}}`.
pub(super) const PRELUDE_VARS: [&str; 5] = ["$", "$labels", "$externalLabels", "$externalURL", "$value"];

/// What a template parsed into.
pub(super) struct Parsed {
    pub(super) nodes: Vec<Node>,
    /// Literal patterns of `match` and `reReplaceAll`, compiled once.
    pub(super) regexes: HashMap<String, Regex>,
}

pub(super) fn parse(src: &str) -> Result<Parsed, String> {
    let mut p = Parser {
        src,
        items: lex(src),
        i: 0,
        vars: PRELUDE_VARS.iter().map(|v| v.to_string()).collect(),
        range_depth: 0,
        depth: 0,
        regexes: HashMap::new(),
    };
    let nodes = p.parse_root().map_err(|(pos, msg)| format!("{}: {msg}", position(src, pos)))?;
    Ok(Parsed { nodes, regexes: p.regexes })
}

type PResult<T> = Result<T, (usize, String)>;

/// How a list of nodes ended.
enum Term {
    End,
    /// `{{else}}`, possibly followed by `if` or `with` (left unread).
    Else(Option<Kind>),
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Term::End => write!(f, "{{{{end}}}}"),
            Term::Else(_) => write!(f, "{{{{else}}}}"),
        }
    }
}

/// One element of a list of nodes: a node, or the `{{end}}`/`{{else}}` that ends the list.
enum ListItem {
    Node(Node),
    Term(usize, Term),
}

struct Parser<'a> {
    src: &'a str,
    items: Vec<Item>,
    i: usize,
    /// Variables in scope at this point of the text, as Go's parser tracks them.
    vars: Vec<String>,
    range_depth: usize,
    depth: usize,
    regexes: HashMap<String, Regex>,
}

impl Parser<'_> {
    fn err<T>(&self, pos: usize, msg: impl Into<String>) -> PResult<T> {
        Err((pos, msg.into()))
    }

    fn unexpected<T>(&self, item: &Item, context: &str) -> PResult<T> {
        self.err(item.pos, format!("unexpected {item} in {context}"))
    }

    /// The next token; a lexing error ends the parse with its message.
    fn next(&mut self) -> PResult<Item> {
        let item = self.items.get(self.i).or(self.items.last()).cloned().unwrap_or(Item {
            kind: Kind::Eof,
            pos: self.src.len(),
            val: String::new(),
        });
        if self.i < self.items.len() {
            self.i += 1;
        }
        if item.kind == Kind::Error {
            return Err((item.pos, item.val));
        }
        Ok(item)
    }

    fn backup(&mut self) {
        self.i = self.i.saturating_sub(1);
    }

    fn peek(&self) -> Item {
        self.items.get(self.i).or(self.items.last()).cloned().unwrap_or(Item {
            kind: Kind::Eof,
            pos: self.src.len(),
            val: String::new(),
        })
    }

    fn next_non_space(&mut self) -> PResult<Item> {
        loop {
            let item = self.next()?;
            if item.kind != Kind::Space {
                return Ok(item);
            }
        }
    }

    /// Skips spaces and returns the token after them without consuming it.
    fn peek_non_space(&mut self) -> PResult<Item> {
        let item = self.next_non_space()?;
        self.backup();
        Ok(item)
    }

    fn expect(&mut self, kind: Kind, context: &str) -> PResult<Item> {
        let item = self.next_non_space()?;
        if item.kind != kind {
            return self.unexpected(&item, context);
        }
        Ok(item)
    }

    /// Counts one level of nesting (a block or a parenthesised pipeline).
    fn enter(&mut self, pos: usize) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return self.err(pos, format!("template nesting exceeds the limit of {MAX_NESTING} levels"));
        }
        Ok(())
    }

    fn parse_root(&mut self) -> PResult<Vec<Node>> {
        let mut root = Vec::new();
        while self.peek().kind != Kind::Eof {
            match self.text_or_action()? {
                ListItem::Node(n) => root.push(n),
                ListItem::Term(pos, t) => return self.err(pos, format!("unexpected {t}")),
            }
        }
        Ok(root)
    }

    fn item_list(&mut self) -> PResult<(Vec<Node>, Term)> {
        let mut list = Vec::new();
        while self.peek_non_space()?.kind != Kind::Eof {
            match self.text_or_action()? {
                ListItem::Node(n) => list.push(n),
                ListItem::Term(_, t) => return Ok((list, t)),
            }
        }
        let pos = self.src.len();
        self.err(pos, "unexpected EOF")
    }

    fn text_or_action(&mut self) -> PResult<ListItem> {
        let item = self.next_non_space()?;
        match item.kind {
            Kind::Text => Ok(ListItem::Node(Node::Text(item.val))),
            Kind::LeftDelim => self.action(),
            _ => self.unexpected(&item, "input"),
        }
    }

    fn action(&mut self) -> PResult<ListItem> {
        let item = self.next_non_space()?;
        let node = match item.kind {
            Kind::Define | Kind::Template | Kind::Block => {
                let kw = &item.val;
                return self.err(
                    item.pos,
                    format!("{{{{{kw}}}}} is not supported in fleet's templates: an alert template cannot define or include other templates"),
                );
            }
            Kind::Break | Kind::Continue => {
                let next = self.next_non_space()?;
                let kw = format!("{{{{{}}}}}", item.val);
                if next.kind != Kind::RightDelim {
                    return self.unexpected(&next, &kw);
                }
                if self.range_depth == 0 {
                    return self.err(item.pos, format!("{kw} outside {{{{range}}}}"));
                }
                if item.kind == Kind::Break { Node::Break } else { Node::Continue }
            }
            Kind::Else => {
                let peek = self.peek_non_space()?;
                if matches!(peek.kind, Kind::If | Kind::With) {
                    // "{{else if ...": the `if` is left for the enclosing control.
                    return Ok(ListItem::Term(item.pos, Term::Else(Some(peek.kind))));
                }
                self.expect(Kind::RightDelim, "else")?;
                return Ok(ListItem::Term(item.pos, Term::Else(None)));
            }
            Kind::End => {
                self.expect(Kind::RightDelim, "end")?;
                return Ok(ListItem::Term(item.pos, Term::End));
            }
            Kind::If => Node::If(self.control("if", item.pos)?),
            Kind::With => Node::With(self.control("with", item.pos)?),
            Kind::Range => Node::Range(self.range_control(item.pos)?),
            _ => {
                self.backup();
                // Variables declared here persist until the enclosing {{end}}.
                Node::Action(self.pipeline("command", Kind::RightDelim)?)
            }
        };
        Ok(ListItem::Node(node))
    }

    /// `{{if}}` or `{{with}}` up to its `{{end}}`, reading `else if` (`else with`) chains as
    /// further branches rather than nesting them, so that long chains cost no depth.
    fn control(&mut self, context: &'static str, pos: usize) -> PResult<Control> {
        self.enter(pos)?;
        // Variables declared in any branch stay visible to the later ones, as in Go.
        let mark = self.vars.len();
        let chain = if context == "if" { Kind::If } else { Kind::With };
        let mut branches = Vec::new();
        let mut otherwise = None;
        loop {
            let pipe = self.pipeline(context, Kind::RightDelim)?;
            let (list, term) = self.item_list()?;
            branches.push((pipe, list));
            match term {
                Term::End => break,
                Term::Else(next) => {
                    if next == Some(chain) && self.peek().kind == chain {
                        self.next()?;
                        continue;
                    }
                    let (list, term) = self.item_list()?;
                    if !matches!(term, Term::End) {
                        return self.err(self.peek().pos, format!("expected end; found {term}"));
                    }
                    otherwise = Some(list);
                    break;
                }
            }
        }
        self.vars.truncate(mark);
        self.depth -= 1;
        Ok(Control { branches, otherwise })
    }

    fn range_control(&mut self, pos: usize) -> PResult<RangeNode> {
        self.enter(pos)?;
        let mark = self.vars.len();
        let pipe = self.pipeline("range", Kind::RightDelim)?;
        self.range_depth += 1;
        let (list, term) = self.item_list()?;
        self.range_depth -= 1;
        let otherwise = match term {
            Term::End => None,
            Term::Else(_) => {
                let (list, term) = self.item_list()?;
                if !matches!(term, Term::End) {
                    return self.err(self.peek().pos, format!("expected end; found {term}"));
                }
                Some(list)
            }
        };
        self.vars.truncate(mark);
        self.depth -= 1;
        Ok(RangeNode { pipe, list, otherwise })
    }

    fn pipeline(&mut self, context: &str, end: Kind) -> PResult<Pipe> {
        let start = self.peek_non_space()?;
        let mut pipe = Pipe { pos: start.pos, decl: Vec::new(), is_assign: false, cmds: Vec::new() };
        // Declarations or assignments: `$x :=`, `$x =`, `$i, $e :=` (range only).
        loop {
            let v = self.peek_non_space()?;
            if v.kind != Kind::Variable {
                break;
            }
            let at_v = self.i;
            self.next()?;
            let next = self.peek_non_space()?;
            match next.kind {
                Kind::Assign | Kind::Declare => {
                    pipe.is_assign = next.kind == Kind::Assign;
                    self.next_non_space()?;
                    pipe.decl.push(v.val.clone());
                    self.vars.push(v.val);
                    break;
                }
                Kind::Char if next.val == "," => {
                    self.next_non_space()?;
                    pipe.decl.push(v.val.clone());
                    self.vars.push(v.val);
                    if context == "range" && pipe.decl.len() < 2 {
                        let after = self.peek_non_space()?;
                        if matches!(after.kind, Kind::Variable | Kind::RightDelim | Kind::RightParen) {
                            continue;
                        }
                        return self.err(after.pos, "range can only initialize variables");
                    }
                    return self.err(next.pos, format!("too many declarations in {context}"));
                }
                _ => {
                    self.i = at_v;
                    break;
                }
            }
        }
        loop {
            let item = self.next_non_space()?;
            match item.kind {
                k if k == end => {
                    self.check_pipeline(&pipe, context)?;
                    return Ok(pipe);
                }
                Kind::Bool
                | Kind::CharConstant
                | Kind::Complex
                | Kind::Dot
                | Kind::Field
                | Kind::Identifier
                | Kind::Number
                | Kind::Nil
                | Kind::RawString
                | Kind::String
                | Kind::Variable
                | Kind::LeftParen => {
                    self.backup();
                    let cmd = self.command()?;
                    pipe.cmds.push(cmd);
                }
                _ => return self.unexpected(&item, context),
            }
        }
    }

    fn command(&mut self) -> PResult<Command> {
        let pos = self.peek_non_space()?.pos;
        let mut args = Vec::new();
        loop {
            self.peek_non_space()?;
            if let Some(op) = self.operand()? {
                args.push(op);
            }
            let item = self.next()?;
            match item.kind {
                Kind::Space => continue,
                Kind::RightDelim | Kind::RightParen => self.backup(),
                Kind::Pipe => {}
                _ => return self.unexpected(&item, "operand"),
            }
            break;
        }
        if args.is_empty() {
            return self.err(pos, "empty command");
        }
        Ok(Command { pos, args })
    }

    fn operand(&mut self) -> PResult<Option<Operand>> {
        let Some(node) = self.term()? else { return Ok(None) };
        if self.peek().kind != Kind::Field {
            return Ok(Some(node));
        }
        let mut more = Vec::new();
        while self.peek().kind == Kind::Field {
            more.push(self.next()?.val[1..].to_string());
        }
        Ok(Some(match node {
            Operand::Field { pos, mut idents } => {
                idents.extend(more);
                Operand::Field { pos, idents }
            }
            Operand::Variable { pos, name, mut fields } => {
                fields.extend(more);
                Operand::Variable { pos, name, fields }
            }
            n @ (Operand::Bool(..) | Operand::Str { .. } | Operand::Number(_) | Operand::Nil(_) | Operand::Dot(_)) => {
                let s = super::strconv::quote(&n.to_string());
                return self.err(n.pos(), format!("unexpected . after term {s}"));
            }
            base => Operand::Chain { pos: base.pos(), base: Box::new(base), fields: more },
        }))
    }

    fn term(&mut self) -> PResult<Option<Operand>> {
        let item = self.next_non_space()?;
        let pos = item.pos;
        Ok(Some(match item.kind {
            Kind::Identifier => {
                if item.val == "call" {
                    return self.err(pos, "the function \"call\" is not supported in fleet's templates: alert data holds no functions to call");
                }
                let Some(id) = funcs::lookup(&item.val) else {
                    return self.err(pos, format!("function {} not defined", super::strconv::quote(&item.val)));
                };
                Operand::Func { pos, id }
            }
            Kind::Dot => Operand::Dot(pos),
            Kind::Nil => Operand::Nil(pos),
            Kind::Variable => {
                if !self.vars.contains(&item.val) {
                    return self.err(pos, format!("undefined variable {}", super::strconv::quote(&item.val)));
                }
                Operand::Variable { pos, name: item.val, fields: Vec::new() }
            }
            Kind::Field => Operand::Field { pos, idents: vec![item.val[1..].to_string()] },
            Kind::Bool => Operand::Bool(pos, item.val == "true"),
            Kind::CharConstant | Kind::Complex | Kind::Number => Operand::Number(number(&item)?),
            Kind::LeftParen => {
                self.enter(pos)?;
                let pipe = self.pipeline("parenthesized pipeline", Kind::RightParen)?;
                self.depth -= 1;
                Operand::Pipe(Box::new(pipe))
            }
            Kind::String | Kind::RawString => {
                let value = unquote(&item.val).map_err(|e| (pos, e))?;
                Operand::Str { pos, quoted: item.val, value }
            }
            _ => {
                self.backup();
                return Ok(None);
            }
        }))
    }

    fn check_pipeline(&mut self, pipe: &Pipe, context: &str) -> PResult<()> {
        if pipe.cmds.is_empty() {
            return self.err(pipe.pos, format!("missing value for {context}"));
        }
        // Only the first command of a pipeline can start with a non-executable operand.
        for (i, c) in pipe.cmds.iter().enumerate().skip(1) {
            if c.args[0].is_literal() {
                return self.err(c.pos, format!("non executable command in pipeline stage {}", i + 1));
            }
        }
        for (i, c) in pipe.cmds.iter().enumerate() {
            self.check_command(c, i > 0)?;
        }
        Ok(())
    }

    /// What Prometheus refuses when it loads a rule file is refused here (unknown functions
    /// and variables, found while parsing); what Go only finds out when a command runs (a
    /// wrong argument count, a literal of the wrong type, an invalid regular expression) is
    /// left to the render, which fails as Prometheus does, so that fleet loads every file
    /// promtool accepts. Refused here as well: the time methods fleet does not implement.
    /// Literal regular expressions are compiled once, here.
    fn check_command(&mut self, cmd: &Command, _has_final: bool) -> PResult<()> {
        if let Operand::Func { id, .. } = &cmd.args[0] {
            let f = &FUNCS[*id];
            if matches!(f.name, "match" | "reReplaceAll")
                && let Some(Operand::Str { value, .. }) = cmd.args.get(1)
                && !self.regexes.contains_key(value)
                && let Ok(re) = goregex::compile(value)
            {
                self.regexes.insert(value.clone(), re);
            }
        }
        for arg in &cmd.args {
            check_fields(arg)?;
        }
        Ok(())
    }
}

/// Refuses the methods of Go's time values that fleet does not implement, so that they fail
/// when the rule file loads rather than when an alert fires. The field after `.Labels` or
/// `$labels` is a label name, never a method, and is let through.
fn check_fields(arg: &Operand) -> PResult<()> {
    let is_map = |f: &str| f == "Labels" || f == "ExternalLabels";
    // The fields, and the index of the one that names a label, if any.
    let (fields, pos, key) = match arg {
        Operand::Field { idents, pos } => (idents, *pos, idents.first().is_some_and(|f| is_map(f)).then_some(1)),
        Operand::Variable { name, fields, pos } => {
            let key = if name == "$labels" || name == "$externalLabels" {
                Some(0)
            } else {
                fields.first().is_some_and(|f| is_map(f)).then_some(1)
            };
            (fields, *pos, key)
        }
        Operand::Chain { fields, pos, .. } => (fields, *pos, fields.first().is_some_and(|f| is_map(f)).then_some(1)),
        _ => return Ok(()),
    };
    let unsupported = fields
        .iter()
        .enumerate()
        .find(|(i, f)| Some(*i) != key && funcs::UNSUPPORTED_TIME_METHODS.contains(&f.as_str()));
    if let Some((_, f)) = unsupported {
        return Err((pos, format!("the time method .{f} is not supported in fleet's templates")));
    }
    Ok(())
}

/// Go's `newNumber`: reads a literal as every type it fits.
fn number(item: &Item) -> PResult<Number> {
    let text = item.val.clone();
    let complex_err = || (item.pos, format!("complex number {text} is not supported in fleet's templates"));
    match item.kind {
        Kind::CharConstant => {
            let r = unquote_char(&text).map_err(|e| (item.pos, e))?;
            return Ok(Number { pos: item.pos, text, int: Some(r), uint: Some(r as u64), float: Some(r as f64) });
        }
        Kind::Complex => return Err(complex_err()),
        _ => {}
    }
    // Imaginary constants are complex even when zero.
    if let Some(body) = text.strip_suffix('i')
        && parse_float(body).is_ok()
    {
        return Err(complex_err());
    }
    let mut uint = parse_uint(&text);
    let int = parse_int(&text);
    if int == Some(0) {
        // "-0" reads as unsigned 0 too.
        uint = Some(0);
    }
    let mut n = Number { pos: item.pos, text: text.clone(), int, uint, float: None };
    if let Some(i) = int {
        n.float = Some(i as f64);
    } else if let Some(u) = uint {
        n.float = Some(u as f64);
    } else if let Ok(f) = parse_float(&text) {
        // Parsed as a float but looks like an integer: too large to be one.
        if !text.contains(['.', 'e', 'E', 'p', 'P']) {
            return Err((item.pos, format!("integer overflow: {}", super::strconv::quote(&text))));
        }
        n.float = Some(f);
        if f.fract() == 0.0 && f > -9.223_372_036_854_776e18 && f < 9.223_372_036_854_776e18 {
            n.int = Some(f as i64);
        }
        if f.fract() == 0.0 && (0.0..1.844_674_407_370_955_2e19).contains(&f) {
            n.uint = Some(f as u64);
        }
    }
    if n.int.is_none() && n.uint.is_none() && n.float.is_none() {
        return Err((item.pos, format!("illegal number syntax: {}", super::strconv::quote(&text))));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_like_go() {
        let item = |s: &str| Item { kind: Kind::Number, pos: 0, val: s.into() };
        let n = number(&item("0x1F")).unwrap();
        assert_eq!((n.int, n.ideal().unwrap().type_name()), (Some(31), "int"));
        assert_eq!(number(&item("1e3")).unwrap().ideal().unwrap().type_name(), "float64");
        assert_eq!(number(&item("1_000")).unwrap().int, Some(1000));
        assert_eq!(number(&item("0o17")).unwrap().int, Some(15));
        assert_eq!(number(&item("017")).unwrap().int, Some(15));
        assert!(number(&item("089")).is_err());
        assert!(number(&item("18446744073709551615")).unwrap().ideal().unwrap_err().contains("overflows int"));
        assert!(number(&item("99999999999999999999")).unwrap_err().1.contains("integer overflow"));
        let c = Item { kind: Kind::CharConstant, pos: 0, val: "'\\n'".into() };
        assert_eq!(number(&c).unwrap().int, Some(10));
    }
}
