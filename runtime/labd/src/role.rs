//! Who may do what: the three roles a principal (an API token, an MQTT identity) can hold.
//! A leaf: the store keeps roles, the API checks them, telemetry turns them into topic grants.

/// A principal's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Technician,
    Scientist,
}

/// A role name that is none of the three.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("role `{0}`: use admin, technician or scientist")]
pub struct UnknownRole(pub String);

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Technician => "technician",
            Role::Scientist => "scientist",
        }
    }

    pub fn parse(s: &str) -> Result<Role, UnknownRole> {
        match s {
            "admin" => Ok(Role::Admin),
            "technician" => Ok(Role::Technician),
            "scientist" => Ok(Role::Scientist),
            other => Err(UnknownRole(other.to_string())),
        }
    }
}
