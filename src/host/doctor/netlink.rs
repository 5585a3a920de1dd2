//! A PF's VF settings (administrative MAC, VLAN, spoof check, trust, link
//! state) read over rtnetlink: one RTM_GETLINK for the PF's netdev with the
//! VF extension mask, answered by one RTM_NEWLINK with IFLA_VFINFO_LIST.
//! Synchronous, on a `netlink-sys` socket; the messages are built and
//! parsed with `netlink-packet-route`.

use std::fmt;
use std::io;

use netlink_packet_core::{
    DecodeError, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST,
};
use netlink_packet_route::link::{
    LinkAttribute, LinkExtentMask, LinkMessage, LinkVfInfo, VfInfo, VfLinkState,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use thiserror::Error;

/// Messages read before giving up on an answer.
const MAX_REPLIES: usize = 16;
/// The request's sequence number.
const SEQ: u32 = 1;

/// Errors from reading VF settings.
#[derive(Debug, Error)]
pub enum NetlinkError {
    /// The socket could not be opened or bound.
    #[error("cannot open an rtnetlink socket")]
    Socket(#[source] io::Error),
    /// Sending or receiving failed.
    #[error("rtnetlink I/O failed")]
    Io(#[source] io::Error),
    /// The kernel answered with an error.
    #[error("rtnetlink refused RTM_GETLINK for {ifname}")]
    Refused {
        /// The PF netdev.
        ifname: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The answer could not be decoded.
    #[error("cannot decode the rtnetlink answer")]
    Decode(#[source] DecodeError),
    /// No RTM_NEWLINK came back.
    #[error("rtnetlink sent no link message for {0}")]
    NoLink(String),
}

/// A VF's link state as set on the PF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Follows the PF's link.
    Auto,
    /// Always up.
    Enable,
    /// Always down.
    Disable,
    /// A value this build does not know.
    Other(u32),
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkState::Auto => write!(f, "auto"),
            LinkState::Enable => write!(f, "enable"),
            LinkState::Disable => write!(f, "disable"),
            LinkState::Other(v) => write!(f, "{v}"),
        }
    }
}

/// One VF's administrative settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VfLink {
    /// VF number on the PF.
    pub vf: u32,
    /// Administrative MAC (all zero: none set).
    pub mac: [u8; 6],
    /// VLAN id (0: none).
    pub vlan: u32,
    /// VLAN priority.
    pub qos: u32,
    /// Spoof checking, if reported.
    pub spoof_check: Option<bool>,
    /// Trust, if reported.
    pub trust: Option<bool>,
    /// Link state, if reported.
    pub link_state: Option<LinkState>,
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The RTM_GETLINK request for `ifname`, asking for VF info without stats.
pub fn request(ifname: &str) -> Vec<u8> {
    let mut msg = LinkMessage::default();
    msg.attributes
        .push(LinkAttribute::IfName(ifname.to_string()));
    msg.attributes.push(LinkAttribute::ExtMask(vec![
        LinkExtentMask::Vf,
        LinkExtentMask::SkipStats,
    ]));
    let mut packet = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(msg)),
    );
    packet.header.flags = NLM_F_REQUEST;
    packet.header.sequence_number = SEQ;
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

fn vf_link(info: &LinkVfInfo) -> VfLink {
    let mut out = VfLink::default();
    for attr in &info.0 {
        match attr {
            VfInfo::Mac(m) => {
                out.vf = m.vf_id;
                out.mac.copy_from_slice(&m.mac[..6]);
            }
            VfInfo::Vlan(v) => {
                out.vlan = v.vlan_id;
                out.qos = v.qos;
            }
            VfInfo::SpoofCheck(s) => out.spoof_check = Some(s.enabled),
            VfInfo::Trust(t) => out.trust = Some(t.enabled),
            VfInfo::LinkState(l) => {
                out.link_state = Some(match l.state {
                    VfLinkState::Auto => LinkState::Auto,
                    VfLinkState::Enable => LinkState::Enable,
                    VfLinkState::Disable => LinkState::Disable,
                    other => LinkState::Other(u32::from(other)),
                })
            }
            _ => {}
        }
    }
    out
}

/// What one received buffer said: the VFs, or nothing yet.
pub fn parse_reply(buf: &[u8], ifname: &str) -> Result<Option<Vec<VfLink>>, NetlinkError> {
    let mut offset = 0;
    while offset < buf.len() {
        let msg: NetlinkMessage<RouteNetlinkMessage> =
            NetlinkMessage::deserialize(&buf[offset..]).map_err(NetlinkError::Decode)?;
        match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                let vfs = link
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        LinkAttribute::VfInfoList(list) => Some(list.iter().map(vf_link).collect()),
                        _ => None,
                    })
                    .unwrap_or_default();
                return Ok(Some(vfs));
            }
            NetlinkPayload::Error(e) if e.code.is_some() => {
                return Err(NetlinkError::Refused {
                    ifname: ifname.to_string(),
                    source: e.to_io(),
                })
            }
            _ => {}
        }
        let len = msg.header.length as usize;
        if len == 0 {
            break;
        }
        offset += len;
    }
    Ok(None)
}

/// The VFs of PF netdev `ifname`, read from the kernel.
pub fn vf_links(ifname: &str) -> Result<Vec<VfLink>, NetlinkError> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
    socket.bind_auto().map_err(NetlinkError::Socket)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(NetlinkError::Socket)?;
    socket.send(&request(ifname), 0).map_err(NetlinkError::Io)?;
    for _ in 0..MAX_REPLIES {
        // Sized by the kernel (MSG_PEEK | MSG_TRUNC), so a PF with many VFs fits.
        let (buf, _) = socket.recv_from_full().map_err(NetlinkError::Io)?;
        if buf.is_empty() {
            break;
        }
        if let Some(vfs) = parse_reply(&buf, ifname)? {
            return Ok(vfs);
        }
    }
    Err(NetlinkError::NoLink(ifname.to_string()))
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::ErrorMessage;
    use netlink_packet_route::link::{
        VfInfoLinkState, VfInfoMac, VfInfoSpoofCheck, VfInfoTrust, VfInfoVlan,
    };

    use super::*;

    fn serialize(payload: NetlinkPayload<RouteNetlinkMessage>) -> Vec<u8> {
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), payload);
        packet.header.sequence_number = SEQ;
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        buf
    }

    fn vf(n: u32, mac: &[u8], vlan: u32, state: VfLinkState) -> LinkVfInfo {
        LinkVfInfo(vec![
            VfInfo::Mac(VfInfoMac::new(n, mac)),
            VfInfo::Vlan(VfInfoVlan::new(n, vlan, 0)),
            VfInfo::SpoofCheck(VfInfoSpoofCheck::new(n, true)),
            VfInfo::LinkState(VfInfoLinkState::new(n, state)),
            VfInfo::Trust(VfInfoTrust::new(n, n == 1)),
        ])
    }

    #[test]
    fn request_asks_for_the_pf_with_vf_info() {
        let bytes = request("enp2s0f0");
        let msg: NetlinkMessage<RouteNetlinkMessage> = NetlinkMessage::deserialize(&bytes).unwrap();
        assert_eq!(msg.header.flags, NLM_F_REQUEST);
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(link)) = msg.payload else {
            panic!("not a GetLink: {:?}", msg.payload);
        };
        assert!(link
            .attributes
            .contains(&LinkAttribute::IfName("enp2s0f0".into())));
        let mask = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::ExtMask(m) => Some(m.clone()),
            _ => None,
        });
        assert!(mask.unwrap().contains(&LinkExtentMask::Vf));
    }

    #[test]
    fn newlink_with_vf_info_is_decoded() {
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let mut link = LinkMessage::default();
        link.header.index = 2;
        link.attributes.push(LinkAttribute::IfName("eth0".into()));
        link.attributes.push(LinkAttribute::VfInfoList(vec![
            vf(0, &mac, 0, VfLinkState::Auto),
            vf(1, &[0; 6], 100, VfLinkState::Disable),
        ]));
        let bytes = serialize(NetlinkPayload::from(RouteNetlinkMessage::NewLink(link)));
        let got = parse_reply(&bytes, "eth0").unwrap().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(format_mac(&got[0].mac), "52:54:00:12:34:56");
        assert_eq!(
            got[0],
            VfLink {
                vf: 0,
                mac,
                vlan: 0,
                qos: 0,
                spoof_check: Some(true),
                trust: Some(false),
                link_state: Some(LinkState::Auto),
            }
        );
        assert_eq!((got[1].vf, got[1].vlan, got[1].mac), (1, 100, [0; 6]));
        assert_eq!(got[1].link_state, Some(LinkState::Disable));
        assert_eq!(got[1].trust, Some(true));
        // A link without VFs has an empty list; a truncated buffer is an error.
        let bytes = serialize(NetlinkPayload::from(RouteNetlinkMessage::NewLink(
            LinkMessage::default(),
        )));
        assert_eq!(parse_reply(&bytes, "eth0").unwrap(), Some(vec![]));
        assert!(matches!(
            parse_reply(&bytes[..10], "eth0"),
            Err(NetlinkError::Decode(_))
        ));
    }

    #[test]
    fn kernel_errors_are_reported() {
        let mut err = ErrorMessage::default();
        err.code = std::num::NonZeroI32::new(-libc::ENODEV);
        let bytes = serialize(NetlinkPayload::Error(err));
        let e = parse_reply(&bytes, "eth9").unwrap_err();
        let NetlinkError::Refused { ifname, source } = &e else {
            panic!("{e:?}");
        };
        assert_eq!(ifname, "eth9");
        assert_eq!(source.raw_os_error(), Some(libc::ENODEV));
    }

    #[test]
    fn loopback_over_a_real_socket() {
        // The real path: lo exists in every network namespace and has no VFs.
        match vf_links("lo") {
            Ok(vfs) => assert!(vfs.is_empty(), "{vfs:?}"),
            Err(NetlinkError::Socket(e)) => crate::testing::skip(
                "loopback_over_a_real_socket",
                &format!("no rtnetlink socket: {e}"),
            ),
            Err(e) => panic!("{e:?}"),
        }
        assert!(matches!(
            vf_links("no-such-if0"),
            Err(NetlinkError::Refused { .. }) | Err(NetlinkError::Socket(_))
        ));
    }
}
