//! SiLA 2 Feature Definitions (FDL, the XML a server returns from `GetFeatureDefinition`): the
//! commands of a feature with their parameters and responses, enough to call any server's
//! commands whose values are basic types, and to check a mapping in `lab.toml` against what the
//! server says it implements.

use std::fmt;

/// A SiLA basic type (the ones a mapping can fill from a plan command or a constant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basic {
    String,
    Integer,
    Real,
    Boolean,
}

/// A parameter's or response's type as far as Labwright can use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataType {
    Basic(Basic),
    /// A list of a basic type (repeated field of the basic type's message).
    List(Basic),
    /// Anything else (lists, structures, binary, dates, custom types): described, not used.
    Other(String),
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataType::Basic(b) => write!(f, "{b:?}"),
            DataType::List(b) => write!(f, "List of {b:?}"),
            DataType::Other(what) => f.write_str(what),
        }
    }
}

/// One parameter or response: its identifier and type, in the order of the protobuf fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub identifier: String,
    pub data_type: DataType,
}

/// One command of a feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub identifier: String,
    pub observable: bool,
    pub parameters: Vec<Element>,
    pub responses: Vec<Element>,
    pub errors: Vec<String>,
}

/// A feature: its fully qualified identifier (`originator/category/Identifier/vMajor`) and commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    pub originator: String,
    pub category: String,
    pub identifier: String,
    pub major_version: String,
    pub commands: Vec<Command>,
}

impl Feature {
    /// `originator/category/Identifier/vMajor`, as `Get_ImplementedFeatures` lists it.
    pub fn qualified(&self) -> String {
        format!("{}/{}/{}/v{}", self.originator, self.category, self.identifier, self.major_version)
    }

    /// The gRPC service that carries the feature (`sila2.<originator>.<category>.<identifier
    /// in lower case>.v<major>.<Identifier>`).
    pub fn service(&self) -> String {
        format!(
            "sila2.{}.{}.{}.v{}.{}",
            self.originator,
            self.category,
            self.identifier.to_lowercase(),
            self.major_version,
            self.identifier
        )
    }

    pub fn command(&self, identifier: &str) -> Option<&Command> {
        self.commands.iter().find(|c| c.identifier == identifier)
    }
}

fn child<'a>(node: roxmltree::Node<'a, 'a>, name: &str) -> Option<roxmltree::Node<'a, 'a>> {
    node.children().find(|c| c.is_element() && c.tag_name().name() == name)
}

fn text(node: roxmltree::Node, name: &str) -> Option<String> {
    child(node, name).and_then(|n| n.text()).map(|t| t.trim().to_string())
}

fn data_type(node: roxmltree::Node) -> DataType {
    let Some(dt) = child(node, "DataType") else { return DataType::Other("no DataType".into()) };
    let Some(kind) = dt.children().find(|c| c.is_element()) else { return DataType::Other("empty DataType".into()) };
    match kind.tag_name().name() {
        "Basic" => match kind.text().map(str::trim) {
            Some("String") => DataType::Basic(Basic::String),
            Some("Integer") => DataType::Basic(Basic::Integer),
            Some("Real") => DataType::Basic(Basic::Real),
            Some("Boolean") => DataType::Basic(Basic::Boolean),
            other => DataType::Other(format!("Basic {}", other.unwrap_or("?"))),
        },
        // A constrained basic type is carried as the basic type; the server checks the constraint.
        "Constrained" => match data_type(kind) {
            DataType::Basic(b) => DataType::Basic(b),
            other => DataType::Other(format!("Constrained {other}")),
        },
        "List" => match data_type(kind) {
            DataType::Basic(b) => DataType::List(b),
            other => DataType::Other(format!("List of {other}")),
        },
        other => DataType::Other(other.to_string()),
    }
}

fn elements(command: roxmltree::Node, name: &str) -> Vec<Element> {
    command
        .children()
        .filter(|c| c.is_element() && c.tag_name().name() == name)
        .map(|p| Element { identifier: text(p, "Identifier").unwrap_or_default(), data_type: data_type(p) })
        .collect()
}

/// Parses a feature definition; says what is missing.
pub fn parse(xml: &str) -> Result<Feature, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("not a feature definition: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "Feature" {
        return Err(format!("the root element is <{}>, not <Feature>", root.tag_name().name()));
    }
    let attr = |k: &str| root.attribute(k).map(str::to_string).ok_or_else(|| format!("<Feature> has no {k} attribute"));
    let version = attr("FeatureVersion")?;
    let major_version = version.split('.').next().unwrap_or("1").to_string();
    let identifier = text(root, "Identifier").ok_or("<Feature> has no <Identifier>")?;
    let commands = root
        .children()
        .filter(|c| c.is_element() && c.tag_name().name() == "Command")
        .map(|c| Command {
            identifier: text(c, "Identifier").unwrap_or_default(),
            observable: text(c, "Observable").as_deref() == Some("Yes"),
            parameters: elements(c, "Parameter"),
            responses: elements(c, "Response"),
            errors: child(c, "DefinedExecutionErrors")
                .map(|e| {
                    e.children()
                        .filter_map(|i| i.text())
                        .map(|t| t.trim().to_string())
                        .filter(|t| !t.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    Ok(Feature { originator: attr("Originator")?, category: attr("Category")?, identifier, major_version, commands })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labwrights_own_plate_reader_feature_parses() {
        let f = parse(include_str!("../../../protos/proto/sila2/PlateReader.sila.xml")).unwrap();
        assert_eq!(f.qualified(), "org.labwright/instruments/PlateReader/v1");
        assert_eq!(f.service(), "sila2.org.labwright.instruments.platereader.v1.PlateReader");
        let read = f.command("ReadAbsorbance").unwrap();
        assert!(read.observable);
        assert_eq!(read.parameters.len(), 2);
        assert_eq!(read.parameters[0].data_type, DataType::List(Basic::String));
        assert_eq!(read.responses[0].data_type, DataType::List(Basic::Real));
        assert_eq!(read.errors, ["NoPlateLoaded"]);
        let load = f.command("LoadPlate").unwrap();
        assert!(!load.observable);
        assert_eq!(load.parameters[0].data_type, DataType::Basic(Basic::String));
        let service = parse(include_str!("../../../protos/proto/sila2/SiLAService.sila.xml")).unwrap();
        assert_eq!(service.service(), "sila2.org.silastandard.core.silaservice.v1.SiLAService");
    }

    #[test]
    fn what_is_not_a_feature_says_so() {
        assert!(parse("<Nope/>").unwrap_err().contains("<Nope>"));
        assert!(parse("not xml").unwrap_err().contains("not a feature definition"));
    }
}
