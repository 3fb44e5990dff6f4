//! The evaluator: walks a parsed template over an alert's data as Go 1.19's
//! text/template/exec.go does (variable scoping, `if`/`with`/`range` and their `else`s,
//! `break`/`continue`, pipelines passing their value as the last argument, field chains,
//! `missingkey=zero` map lookups, Go's argument type checks), within
//! [`MAX_OUTPUT`](super::MAX_OUTPUT) bytes of output and [`MAX_STEPS`](super::MAX_STEPS)
//! steps.

use std::collections::HashMap;
use std::fmt::Display;
use std::rc::Rc;

use regex::Regex;

use super::funcs::{self, Call, Env, FUNCS, MTy, Ty};
use super::gofmt;
use super::parse::{Command, Control, Node, Number, Operand, Pipe, RangeNode, position};
use super::value::{Root, Value};
use super::{Data, MAX_OUTPUT, MAX_STEPS};

/// The arguments a field, method or function gets from its command: the operands after it
/// and, in a pipeline, the previous command's value.
struct Args<'t> {
    nodes: &'t [Operand],
    fin: Option<Value>,
}

impl Args<'_> {
    const NONE: Args<'static> = Args { nodes: &[], fin: None };

    fn count(&self) -> usize {
        self.nodes.len() + usize::from(self.fin.is_some())
    }

    fn is_empty(&self) -> bool {
        self.count() == 0
    }
}

/// Where an error happened: a position and the node to show.
#[derive(Clone, Copy)]
struct At<'n> {
    pos: usize,
    node: &'n dyn Display,
}

/// How walking a list of nodes ended.
enum Flow {
    Normal,
    Break,
    Continue,
}

type R<T> = Result<T, String>;

struct State<'t, 'e> {
    src: &'t str,
    env: Env<'e>,
    /// The variable stack: declarations push, the end of a block pops.
    vars: Vec<(&'t str, Value)>,
    out: String,
    steps: usize,
}

pub(super) fn render(src: &str, nodes: &[Node], regexes: &HashMap<String, Regex>, data: &Data<'_>) -> R<String> {
    let root = Rc::new(Root {
        labels: Rc::new(data.labels.clone()),
        external_labels: Rc::new(data.external_labels.clone()),
        external_url: data.external_url.clone(),
        value: data.value,
    });
    let dot = Value::Root(root.clone());
    let mut s = State {
        src,
        env: Env { data, literal_regexes: regexes, regexes: HashMap::new(), queries: 0 },
        vars: vec![
            ("$", dot.clone()),
            ("$labels", Value::StrMap(root.labels.clone())),
            ("$externalLabels", Value::StrMap(root.external_labels.clone())),
            ("$externalURL", Value::str(root.external_url.as_str())),
            ("$value", Value::Float(root.value)),
        ],
        out: String::new(),
        steps: 0,
    };
    s.walk(&dot, nodes)?;
    Ok(s.out)
}

impl<'t> State<'t, '_> {
    /// An error at a node: "line:col: executing at <node>: msg", like Go's.
    fn err(&self, pos: usize, node: &dyn Display, msg: impl Display) -> String {
        format!("{}: executing at <{node}>: {msg}", position(self.src, pos))
    }

    fn err_at(&self, at: At<'_>, msg: impl Display) -> String {
        self.err(at.pos, at.node, msg)
    }

    fn step(&mut self) -> R<()> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return Err(format!("template evaluation exceeds the limit of {MAX_STEPS} steps"));
        }
        Ok(())
    }

    fn write(&mut self, s: &str) -> R<()> {
        if self.out.len() + s.len() > MAX_OUTPUT {
            return Err(format!("template output exceeds the limit of {MAX_OUTPUT} bytes"));
        }
        self.out.push_str(s);
        Ok(())
    }

    fn walk(&mut self, dot: &Value, nodes: &'t [Node]) -> R<Flow> {
        for node in nodes {
            self.step()?;
            let flow = match node {
                Node::Text(t) => {
                    self.write(t)?;
                    Flow::Normal
                }
                Node::Action(pipe) => {
                    let v = self.eval_pipeline(dot, pipe)?;
                    // An action that declares variables prints nothing.
                    if pipe.decl.is_empty() {
                        let s = gofmt::print_template_value(&v);
                        self.write(&s)?;
                    }
                    Flow::Normal
                }
                Node::If(c) => self.walk_control(dot, c, false)?,
                Node::With(c) => self.walk_control(dot, c, true)?,
                Node::Range(r) => self.walk_range(dot, r)?,
                Node::Break => Flow::Break,
                Node::Continue => Flow::Continue,
            };
            if !matches!(flow, Flow::Normal) {
                return Ok(flow);
            }
        }
        Ok(Flow::Normal)
    }

    /// `if` and `with` chains. Variables declared in them end at their `{{end}}`.
    fn walk_control(&mut self, dot: &Value, c: &'t Control, with: bool) -> R<Flow> {
        let mark = self.vars.len();
        let flow = self.walk_branches(dot, c, with);
        self.vars.truncate(mark);
        flow
    }

    fn walk_branches(&mut self, dot: &Value, c: &'t Control, with: bool) -> R<Flow> {
        for (pipe, list) in &c.branches {
            let v = self.eval_pipeline(dot, pipe)?;
            if v.truth() {
                return self.walk(if with { &v } else { dot }, list);
            }
        }
        match &c.otherwise {
            Some(list) => self.walk(dot, list),
            None => Ok(Flow::Normal),
        }
    }

    fn walk_range(&mut self, dot: &Value, r: &'t RangeNode) -> R<Flow> {
        let mark = self.vars.len();
        let result = self.walk_range_inner(dot, r);
        self.vars.truncate(mark);
        result.map(|_| Flow::Normal)
    }

    fn walk_range_inner(&mut self, dot: &Value, r: &'t RangeNode) -> R<()> {
        let val = self.eval_pipeline(dot, &r.pipe)?;
        // (key, element) pairs: maps in key order, as Go sorts them.
        let items: Vec<(Value, Value)> = match &val {
            Value::Samples(v) => v
                .borrow()
                .iter()
                .enumerate()
                .map(|(i, s)| (Value::Int(i as i64), Value::Sample(Some(s.clone()))))
                .collect(),
            Value::StrMap(m) => m.iter().map(|(k, v)| (Value::str(k.as_str()), Value::str(v.as_str()))).collect(),
            Value::AnyMap(m) => m.iter().map(|(k, v)| (Value::str(k.as_str()), v.clone())).collect(),
            // Ranging over nothing is not an error: it runs the else branch.
            Value::Missing => Vec::new(),
            other => {
                let shown = gofmt::print_template_value(other);
                return Err(self.err(r.pipe.pos, &r.pipe, format!("range can't iterate over {shown}")));
            }
        };
        let body_mark = self.vars.len();
        for (key, elem) in &items {
            self.set_range_vars(r, body_mark, key, elem)?;
            let flow = self.walk(elem, &r.list);
            self.vars.truncate(body_mark);
            match flow? {
                Flow::Break => break,
                Flow::Normal | Flow::Continue => {}
            }
        }
        if items.is_empty()
            && let Some(list) = &r.otherwise
        {
            self.walk(dot, list)?;
        }
        Ok(())
    }

    /// Sets `$e` (one variable) or `$k, $e` (two) for one iteration.
    fn set_range_vars(&mut self, r: &'t RangeNode, mark: usize, key: &Value, elem: &Value) -> R<()> {
        let decl = &r.pipe.decl;
        if r.pipe.is_assign {
            match decl.as_slice() {
                [e] => self.set_var(e, elem.clone(), r.pipe.pos, &r.pipe)?,
                [k, e] => {
                    self.set_var(k, key.clone(), r.pipe.pos, &r.pipe)?;
                    self.set_var(e, elem.clone(), r.pipe.pos, &r.pipe)?;
                }
                _ => {}
            }
            return Ok(());
        }
        // The declarations were pushed by the pipeline, the element's last.
        if !decl.is_empty() {
            self.vars[mark - 1].1 = elem.clone();
        }
        if decl.len() > 1 {
            self.vars[mark - 2].1 = key.clone();
        }
        Ok(())
    }

    fn var_value(&self, name: &str, pos: usize, node: &dyn Display) -> R<Value> {
        match self.vars.iter().rev().find(|(n, _)| *n == name) {
            Some((_, v)) => Ok(v.clone()),
            None => Err(self.err(pos, node, format!("undefined variable: {name}"))),
        }
    }

    fn set_var(&mut self, name: &str, value: Value, pos: usize, node: &dyn Display) -> R<()> {
        match self.vars.iter_mut().rev().find(|(n, _)| *n == name) {
            Some(slot) => {
                slot.1 = value;
                Ok(())
            }
            None => Err(self.err(pos, node, format!("undefined variable: {name}"))),
        }
    }

    fn eval_pipeline(&mut self, dot: &Value, pipe: &'t Pipe) -> R<Value> {
        let mut value: Option<Value> = None;
        for cmd in &pipe.cmds {
            let v = self.eval_command(dot, cmd, value.take())?;
            // A nil interface{} coming out of a command is "no value", as in Go.
            value = Some(if matches!(v, Value::Nil) { Value::Missing } else { v });
        }
        let value = value.unwrap_or(Value::Missing);
        for name in &pipe.decl {
            if pipe.is_assign {
                self.set_var(name, value.clone(), pipe.pos, pipe)?;
            } else {
                self.vars.push((name.as_str(), value.clone()));
            }
        }
        Ok(value)
    }

    fn not_a_function(&self, cmd: &Command, args: &Args<'_>) -> R<()> {
        if !args.is_empty() {
            let head = &cmd.args[0];
            return Err(self.err(head.pos(), cmd, format!("can't give argument to non-function {head}")));
        }
        Ok(())
    }

    /// One command of a pipeline; `fin` is the previous command's value.
    fn eval_command(&mut self, dot: &Value, cmd: &'t Command, fin: Option<Value>) -> R<Value> {
        self.step()?;
        let args = Args { nodes: &cmd.args[1..], fin };
        let at = |pos: usize| At { pos, node: cmd };
        match &cmd.args[0] {
            Operand::Field { idents, pos } => self.eval_field_chain(dot, dot.clone(), idents, args, at(*pos)),
            Operand::Chain { base, fields, pos } => {
                let recv = self.eval_arg(dot, None, base)?;
                self.eval_field_chain(dot, recv, fields, args, at(*pos))
            }
            Operand::Func { id, pos } => self.eval_function(dot, *id, args, at(*pos)),
            Operand::Pipe(p) => {
                self.not_a_function(cmd, &args)?;
                self.eval_pipeline(dot, p)
            }
            Operand::Variable { name, fields, pos } => {
                let v = self.var_value(name, *pos, cmd)?;
                if fields.is_empty() {
                    self.not_a_function(cmd, &args)?;
                    return Ok(v);
                }
                self.eval_field_chain(dot, v, fields, args, at(*pos))
            }
            Operand::Bool(_, b) => {
                self.not_a_function(cmd, &args)?;
                Ok(Value::Bool(*b))
            }
            Operand::Dot(_) => {
                self.not_a_function(cmd, &args)?;
                Ok(dot.clone())
            }
            Operand::Nil(pos) => Err(self.err(*pos, cmd, "nil is not a command")),
            Operand::Number(n) => {
                self.not_a_function(cmd, &args)?;
                self.ideal(n)
            }
            Operand::Str { value, .. } => {
                self.not_a_function(cmd, &args)?;
                Ok(Value::str(value.as_str()))
            }
        }
    }

    fn ideal(&self, n: &Number) -> R<Value> {
        n.ideal().map_err(|e| self.err(n.pos, &n.text, e))
    }

    /// `.A.B.C` on `recv`; only the last field gets the arguments.
    fn eval_field_chain(
        &mut self,
        dot: &Value,
        mut recv: Value,
        idents: &'t [String],
        args: Args<'t>,
        at: At<'_>,
    ) -> R<Value> {
        let Some((last, init)) = idents.split_last() else { return Ok(recv) };
        for id in init {
            recv = self.eval_field(dot, id, Args::NONE, recv, at)?;
        }
        self.eval_field(dot, last, args, recv, at)
    }

    /// Go's `evalField`: a method, a struct field or a map key of `recv`.
    fn eval_field(&mut self, dot: &Value, name: &str, args: Args<'t>, recv: Value, at: At<'_>) -> R<Value> {
        let fail = |s: &Self, msg: String| Err(s.err_at(at, msg));
        if let Some(params) = funcs::method_params(&recv, name) {
            let params = params.map_err(|e| self.err_at(at, e))?;
            return self.call_method(dot, &recv, name, params, args, at);
        }
        let has_args = !args.is_empty();
        match &recv {
            Value::Missing => Ok(Value::Missing),
            Value::Nil => fail(self, format!("nil pointer evaluating interface {{}}.{name}")),
            Value::Root(r) => {
                let v = match name {
                    "Labels" => Value::StrMap(r.labels.clone()),
                    "ExternalLabels" => Value::StrMap(r.external_labels.clone()),
                    "ExternalURL" => Value::str(r.external_url.as_str()),
                    "Value" => Value::Float(r.value),
                    _ => return fail(self, format!("can't evaluate field {name} in type {}", recv.type_name())),
                };
                if has_args {
                    return fail(self, format!("{name} has arguments but cannot be invoked as function"));
                }
                Ok(v)
            }
            Value::Sample(s) => {
                if name != "Labels" && name != "Value" {
                    return fail(self, format!("can't evaluate field {name} in type *template.sample"));
                }
                let Some(s) = s else { return fail(self, format!("nil pointer evaluating *template.sample.{name}")) };
                if has_args {
                    return fail(self, format!("{name} has arguments but cannot be invoked as function"));
                }
                Ok(if name == "Labels" { Value::StrMap(s.labels.clone()) } else { Value::Float(s.value) })
            }
            Value::StrMap(m) => {
                if has_args {
                    return fail(self, format!("{name} is not a method but has arguments"));
                }
                // missingkey=zero: a missing label is the empty string.
                Ok(Value::Str(m.get(name).cloned().unwrap_or_default()))
            }
            Value::AnyMap(m) => {
                if has_args {
                    return fail(self, format!("{name} is not a method but has arguments"));
                }
                Ok(m.get(name).cloned().unwrap_or(Value::Nil))
            }
            other => fail(self, format!("can't evaluate field {name} in type {}", other.type_name())),
        }
    }

    fn call_method(
        &mut self,
        dot: &Value,
        recv: &Value,
        name: &str,
        params: &[MTy],
        args: Args<'t>,
        at: At<'_>,
    ) -> R<Value> {
        let n = args.count();
        if n != params.len() {
            return Err(self.err_at(at, format!("wrong number of args for {name}: want {} got {n}", params.len())));
        }
        let mut argv = Vec::with_capacity(n);
        for (arg, ty) in args.nodes.iter().zip(params) {
            let v = match (arg, ty) {
                (Operand::Number(num), MTy::Int | MTy::Duration) => match num.int {
                    Some(i) if *ty == MTy::Int => Value::Int(i),
                    Some(i) => Value::Duration(i),
                    None => return Err(self.err(num.pos, arg, format!("expected integer; found {arg}"))),
                },
                (Operand::Str { value, .. }, MTy::Str) => Value::str(value.as_str()),
                (a, _) if a_literal(a) => {
                    return Err(self.err(a.pos(), arg, format!("expected {}; found {arg}", mty_name(*ty))));
                }
                _ => {
                    let v = self.eval_arg(dot, Some(Ty::Any), arg)?;
                    self.method_arg(v, *ty, arg.pos(), arg)?
                }
            };
            argv.push(v);
        }
        if let Some(v) = args.fin {
            let ty = params[params.len() - 1];
            argv.push(self.method_arg(v, ty, at.pos, at.node)?);
        }
        funcs::call_method(recv, name, &argv).map_err(|e| self.err_at(at, format!("error calling {name}: {e}")))
    }

    /// Go's `validateType` for a method argument.
    fn method_arg(&self, v: Value, ty: MTy, pos: usize, node: &dyn Display) -> R<Value> {
        let ok = match (&v, ty) {
            (Value::Int(_), MTy::Int) | (Value::Str(_), MTy::Str) | (Value::Duration(_), MTy::Duration) => true,
            (Value::Time(_), MTy::Time) => true,
            (Value::TimePtr(t), MTy::Time) => return Ok(Value::Time(**t)),
            (Value::DurationPtr(d), MTy::Duration) => return Ok(Value::Duration(**d)),
            _ => false,
        };
        if !ok {
            let got = v.type_name();
            return Err(self.err(pos, node, format!("wrong type for value; expected {}; got {got}", mty_name(ty))));
        }
        Ok(v)
    }

    fn eval_function(&mut self, dot: &Value, id: usize, args: Args<'t>, at: At<'_>) -> R<Value> {
        let f = &FUNCS[id];
        let imp = match f.call {
            Call::And | Call::Or => {
                let is_or = matches!(f.call, Call::Or);
                let mut v = Value::Missing;
                for arg in args.nodes {
                    v = self.eval_arg(dot, Some(Ty::Any), arg)?;
                    if v.truth() == is_or {
                        return Ok(v);
                    }
                }
                if let Some(last) = args.fin {
                    v = validate(last, Ty::Any).map_err(|e| self.err_at(at, e))?;
                }
                return Ok(v);
            }
            Call::Plain(imp) => imp,
        };
        let n = args.count();
        let arity_ok = if f.variadic.is_some() { n >= f.params.len() } else { n == f.params.len() };
        if !arity_ok {
            let at_least = if f.variadic.is_some() { "at least " } else { "" };
            let msg = format!("wrong number of args for {}: want {at_least}{} got {n}", f.name, f.params.len());
            return Err(self.err_at(at, msg));
        }
        let mut argv = Vec::with_capacity(n);
        for (i, arg) in args.nodes.iter().enumerate() {
            argv.push(self.eval_arg(dot, f.param(i), arg)?);
        }
        if let Some(last) = args.fin {
            let ty = f.param(args.nodes.len()).unwrap_or(Ty::Any);
            argv.push(validate(last, ty).map_err(|e| self.err_at(at, e))?);
        }
        imp(&mut self.env, argv).map_err(|e| self.err_at(at, format!("error calling {}: {e}", f.name)))
    }

    /// Go's `evalArg`: an argument, checked against the parameter type (`None`: untyped, for
    /// the base of a chain).
    fn eval_arg(&mut self, dot: &Value, ty: Option<Ty>, arg: &'t Operand) -> R<Value> {
        let v = match arg {
            Operand::Dot(_) => dot.clone(),
            Operand::Nil(pos) => {
                return match ty {
                    Some(Ty::Any) | None => Ok(Value::Nil),
                    Some(Ty::Samples) => Ok(Value::samples(Vec::new())),
                    Some(Ty::Sample) => Ok(Value::Sample(None)),
                    Some(Ty::Str) => Err(self.err(*pos, arg, "cannot assign nil to string")),
                };
            }
            Operand::Field { idents, pos } => {
                self.eval_field_chain(dot, dot.clone(), idents, Args::NONE, At { pos: *pos, node: arg })?
            }
            Operand::Variable { name, fields, pos } => {
                let v = self.var_value(name, *pos, arg)?;
                self.eval_field_chain(dot, v, fields, Args::NONE, At { pos: *pos, node: arg })?
            }
            Operand::Pipe(p) => self.eval_pipeline(dot, p)?,
            Operand::Func { id, pos } => self.eval_function(dot, *id, Args::NONE, At { pos: *pos, node: arg })?,
            Operand::Chain { base, fields, pos } => {
                let recv = self.eval_arg(dot, None, base)?;
                self.eval_field_chain(dot, recv, fields, Args::NONE, At { pos: *pos, node: arg })?
            }
            Operand::Bool(pos, b) => return self.literal(ty, Value::Bool(*b), *pos, arg),
            Operand::Number(n) => {
                let v = self.ideal(n)?;
                return self.literal(ty, v, n.pos, arg);
            }
            Operand::Str { value, pos, .. } => {
                return self.literal(ty, Value::str(value.as_str()), *pos, arg);
            }
        };
        match ty {
            None => Ok(v),
            Some(ty) => validate(v, ty).map_err(|e| self.err(arg.pos(), arg, e)),
        }
    }

    /// A literal where `ty` is expected.
    fn literal(&self, ty: Option<Ty>, v: Value, pos: usize, arg: &Operand) -> R<Value> {
        match (ty, &v) {
            (None | Some(Ty::Any), _) | (Some(Ty::Str), Value::Str(_)) => Ok(v),
            (Some(Ty::Str), _) => Err(self.err(pos, arg, format!("expected string; found {arg}"))),
            (Some(t), _) => Err(self.err(pos, arg, format!("can't handle {arg} for arg of type {}", t.go_name()))),
        }
    }
}

fn a_literal(op: &Operand) -> bool {
    matches!(op, Operand::Bool(..) | Operand::Number(_) | Operand::Str { .. } | Operand::Nil(_))
}

fn mty_name(ty: MTy) -> &'static str {
    match ty {
        MTy::Int => "int",
        MTy::Str => "string",
        MTy::Duration => "time.Duration",
        MTy::Time => "time.Time",
    }
}

/// Go's `validateType`: whether a computed value may be passed where `ty` is expected.
fn validate(v: Value, ty: Ty) -> R<Value> {
    match (ty, v) {
        (Ty::Any, Value::Missing) => Ok(Value::Nil),
        (Ty::Any, v) => Ok(v),
        (Ty::Str, v @ Value::Str(_)) => Ok(v),
        (Ty::Samples, v @ Value::Samples(_)) => Ok(v),
        (Ty::Sample, v @ Value::Sample(_)) => Ok(v),
        (Ty::Str, Value::Missing) => Err("invalid value; expected string".into()),
        (Ty::Samples, Value::Missing) => Ok(Value::samples(Vec::new())),
        (Ty::Sample, Value::Missing) => Ok(Value::Sample(None)),
        (ty, v) => Err(format!("wrong type for value; expected {}; got {}", ty.go_name(), v.type_name())),
    }
}
